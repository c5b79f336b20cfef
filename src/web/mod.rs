//! The live classroom view (`--web`): a page that shows every session's state on the diagram
//! of its state machine as students type, with the mailboxes and the queue. HTTP here is a
//! lesson of its own: another welcome socket, another line protocol. What it shows comes from
//! the live board (`lab/live.rs`), where every session reports.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `server.rs` | the web welcome socket, the routes, the event stream | 18 |
//! | `http.rs` | one HTTP/1.1 request head read and checked, one response written | 18 |
//! | `svg.rs` | the state machine drawn as SVG from its table | 18 |
//! | `store.rs` | mailbox counts and sizes, the queue, one message raw | 18 |
//! | `assets/` | the page, its script and its style, built into the binary | 18 |
//!
//! Standards: none

pub mod server;

pub mod http;

pub mod svg;

pub mod store;
