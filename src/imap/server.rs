//! placeholder
//!
//! Standards: none
