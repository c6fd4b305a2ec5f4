//! Which instance this is: what the node tells it through the environment.

/// The instance's name (`metadata.name`).
pub const ENV_INSTANCE_NAME: &str = "FLOTILLA_INSTANCE_NAME";
/// The instance's namespace (`metadata.namespace`).
pub const ENV_NAMESPACE: &str = "FLOTILLA_NAMESPACE";
/// The name of the node running the instance.
pub const ENV_NODE_NAME: &str = "FLOTILLA_NODE_NAME";
/// How the node asks a command-world instance to stop: `stdin` (the node
/// closes the instance's stdin). See [`crate::command`].
pub const ENV_STOP_SIGNAL: &str = "FLOTILLA_STOP_SIGNAL";

/// Where the workload runs, as the node tells it.
///
/// A Flotilla node sets [`ENV_INSTANCE_NAME`], [`ENV_NAMESPACE`] and
/// [`ENV_NODE_NAME`] for every instance, next to the spec's `env` entries.
/// Outside Flotilla (under `wasmtime serve`, say) they are unset and the
/// accessors return `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    instance_name: Option<String>,
    namespace: Option<String>,
    node_name: Option<String>,
}

/// Reads the workload's [`Context`] from the environment.
pub fn context() -> Context {
    Context {
        instance_name: env(ENV_INSTANCE_NAME),
        namespace: env(ENV_NAMESPACE),
        node_name: env(ENV_NODE_NAME),
    }
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Context {
    /// The instance's name, e.g. `backend-7d9f-x2k4q`.
    pub fn instance_name(&self) -> Option<&str> {
        self.instance_name.as_deref()
    }

    /// The instance's namespace, e.g. `default`.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The node's name.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// A variable from the spec's `env` (or any other the host set); `None`
    /// when unset or empty.
    pub fn env(&self, name: &str) -> Option<String> {
        env(name)
    }

    /// True when running under a Flotilla node.
    pub fn in_flotilla(&self) -> bool {
        self.instance_name.is_some()
    }
}
