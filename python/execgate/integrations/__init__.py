"""Integrations with agent frameworks. Each module imports its framework lazily:
``import execgate`` never imports LangChain."""
