"""Tests of the chat deployment: providers, web search, the chat service."""
