//! The scenario model shared by host and guest.
//!
//! Not implemented yet: the scenario issue fills this crate (topology,
//! cgroups, steps, ops, checks, TOML loading). Nothing here pretends to
//! work; it exists so the workspace has the layout of
//! `shared/spec/architecture.md`.
