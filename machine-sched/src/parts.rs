//! The parts of the machine scheduler that a job's run uses, in one struct the run modules
//! (`exec_run`, `persistent_run`) take. The facade (`machine`) owns them and calls the run
//! modules; keeping the parts here means the run modules never import the facade, so the
//! imports run one way.
//!
//! Each part owns its state behind named operations; the run modules use those operations,
//! never a lock, and no two parts' locks are ever held at once.

use std::sync::Arc;

use crate::gate::Gate;
use crate::instance_pool::InstancePool;
use crate::priority::Priority;
use crate::provision::Provisioner;
use crate::running::Running;

/// What a job's run uses: ordering, priority, housing, the warm pool and the running table.
pub(crate) struct Parts {
    /// The user-space run queue, in user-space mode.
    pub(crate) gate: Option<Gate>,
    /// Confining, raising and lowering.
    pub(crate) priority: Priority,
    /// Cgroups and working directories of instances.
    pub(crate) provision: Arc<Provisioner>,
    /// Idle warm instances.
    pub(crate) pool: InstancePool,
    /// Running jobs.
    pub(crate) running: Running,
}
