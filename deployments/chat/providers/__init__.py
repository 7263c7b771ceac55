"""The LLM vendors' adapters, keyed by the contract's ``llm`` value."""

from __future__ import annotations

from deployments.chat.providers.anthropic import AnthropicProvider
from deployments.chat.providers.base import ChatProvider, vendor_error
from deployments.chat.providers.gemini import GeminiProvider
from deployments.chat.providers.mistral import MistralProvider
from deployments.chat.providers.openai import OpenAIProvider

PROVIDERS: dict[str, type[ChatProvider]] = {
    cls.name: cls for cls in (OpenAIProvider, AnthropicProvider, MistralProvider, GeminiProvider)
}

__all__ = ["PROVIDERS", "AnthropicProvider", "ChatProvider", "GeminiProvider", "MistralProvider", "OpenAIProvider",
           "vendor_error"]
