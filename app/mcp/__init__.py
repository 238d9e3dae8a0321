"""The MCP server: agents use context-manager as tools (docs/agents.md).

server.py     McpSurface: the SDK's MCPServer at /mcp on the API port (Streamable HTTP,
              stateless), its lifespan part, Host/Origin checks
tools.py      the tools (register_agent … read_channel), each a call into app/domain
resources.py  inbox and task resources, and the feeds behind their listen streams
door.py       one call: the caller, a domain Context, results with `pending`, errors
identity.py   who calls: our JWT through the SDK's token verifier, or ?agent_id=
stdio.py      `context-manager mcp`: the same tools over stdio, relayed to a running
              service's /mcp (one writer; events flow as for any client)
hook.py       `context-manager inbox --hook`: unread mail as a Claude Code hook's output
"""
