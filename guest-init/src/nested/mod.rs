//! What only the nested test host's init (`schedrig-nested-init`,
//! src/bin/nested-init.rs) uses, kept in the library to be tested:
//! [`nudge`], the workaround for its emulator's lost timer interrupts.

pub mod nudge;
