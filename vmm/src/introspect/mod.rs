//! Reading the guest kernel from the host side: its symbols now; BTF and
//! page-table walks come with the freeze coordinator.

pub mod symbols;
