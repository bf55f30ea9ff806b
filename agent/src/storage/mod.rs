//! Storage paths: the export roots and how a path given by a console is resolved under them.

pub mod paths;
