//! Transports: how MCP messages reach the server. Each sits beside the others and hands
//! calls to the same [`crate::mcp::PeerDiscoveryServer`].
//!
//! - [`stdio`]: one client on stdin/stdout (what MCP clients start), behind a guard that
//!   bounds lines, orders dependent calls and bounds the work in flight.
//! - [`http`]: MCP's streamable HTTP transport, one server for many clients, with its
//!   security checks (Host, Origin, bearer token, body cap, idle sessions).
//! - [`jsonrpc`]: the JSON-RPC edge both share: what rmcp would drop unanswered, and how
//!   an error whose id could not be read is written for each protocol generation.

pub mod http;
pub mod jsonrpc;
pub mod stdio;
