//! Finding and loading the project files for a command.

use std::path::PathBuf;

use clap::Args;
use tpr_schema::{LoadError, Project};

/// Which project file a command works on; commands flatten this into their
/// arguments.
#[derive(Args, Clone, Debug)]
pub struct ProjectArgs {
    /// The project file; `telepresence.local.toml` beside it overrides it.
    #[arg(short = 'f', long = "file", env = "TPR_FILE", value_name = "FILE", default_value = tpr_schema::TEAM_FILE)]
    pub file: PathBuf,
}

impl ProjectArgs {
    /// Reads, merges, checks and resolves the project; every problem in the
    /// files is in the error.
    pub fn load(&self) -> Result<Project, LoadError> {
        tpr_schema::load(&self.file)
    }
}
