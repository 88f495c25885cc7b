"""Front ends: the MCP server (stdio, streamable HTTP) and the LSP server. No logic lives here."""
