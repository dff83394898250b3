//! Choosing an instance: each routed namespace's [`ring`] of instances and
//! its [`selection`] (round robin, smooth weighted), the [`pool`] of
//! connections to each instance, [`passive`] health from their answers, and
//! the [`origin`] of a namespace's instances (the pushed ring or lookups).

pub(crate) mod origin;
pub(crate) mod passive;
pub(crate) mod pool;
pub(crate) mod ring;
pub(crate) mod selection;
