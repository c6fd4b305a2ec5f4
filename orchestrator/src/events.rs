//! Events for the scheduler and controllers: the client's aggregating,
//! rate-limited recorder (one Event per series, its count moving).

pub use flotilla_client::events::Recorder;
