//! Built-in executors: `shell` and `http`, each a [`Handler`](crate::Handler).
