//! `LabGuard`: a lab torn down when the guard goes (tests).

use anyhow::Result;

use super::{plan, Lab, LabSpec, ServerHandle};

/// Owns a lab and tears it down on drop (tests: cleanup even when an assertion fails).
/// In-process servers started through it are stopped first, so no socket keeps a pod
/// namespace alive after its name is gone.
pub struct LabGuard {
    servers: Option<ServerHandle>,
    lab: Option<Lab>,
}

impl LabGuard {
    pub fn new(lab: Lab) -> LabGuard {
        LabGuard {
            servers: None,
            lab: Some(lab),
        }
    }
    pub fn up(spec: &LabSpec) -> Result<LabGuard> {
        Ok(LabGuard::new(Lab::up(spec)?))
    }
    pub fn up_planned(spec: &LabSpec, plan: &[plan::NodePlan]) -> Result<LabGuard> {
        Ok(LabGuard::new(Lab::up_planned(spec, plan)?))
    }
    /// Serve all pods (now and later) in this process until the guard is dropped.
    pub fn serve(&mut self) -> Result<()> {
        if self.servers.is_none() {
            self.servers = Some(self.start_servers()?);
        }
        Ok(())
    }
    /// Keep the lab running after the guard is gone (e.g. `sluice lab up`), stopping only
    /// this process's in-process servers.
    pub fn into_inner(mut self) -> Lab {
        self.servers.take();
        self.lab.take().expect("lab present until down/drop")
    }
    /// Tear down now and report errors (drop does the same but can only log them).
    pub fn down(mut self) -> Result<()> {
        self.servers.take();
        match self.lab.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("lab present until down/drop")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("lab present until down/drop")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.servers.take();
        if let Some(lab) = self.lab.take() {
            if let Err(e) = lab.teardown() {
                eprintln!("sluice lab {}: teardown: {e:#}", lab.name);
            }
        }
    }
}
