//! The store: the one module that speaks SQL.
