//! Edge hardening (issue 12): every connection makes progress or is closed, headers and in-flight bodies are
//! capped before authentication.

mod conns;
mod limits;
