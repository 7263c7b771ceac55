"""Chat: the vendor-neutral chat types, the vendors' adapters, web search, and the chat
service deployment that runs a conversation with its tools."""
