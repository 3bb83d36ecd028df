//! Hugging Face repo ids (`HuggingFaceTB/SmolLM2-135M-Instruct`) as model names: found in the
//! standard Hugging Face cache when already there, else downloaded into it with hf-hub (native only).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::error::{Error, Result};
use crate::hf;

/// The default endpoint; HF_ENDPOINT overrides it (mirrors, tests).
pub const ENDPOINT: &str = "https://huggingface.co";

/// Whether `s` has the shape of a repo id, `ORG/NAME`, rather than of a file path. Names ending
/// like model files are paths (a mistyped `models/x.gguf` must say "not found", not "download").
pub fn is_repo_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.contains("..")
    };
    let file_like = [".gguf", ".safetensors", ".json", ".bin"]
        .iter()
        .any(|e| s.ends_with(e));
    match s.split_once('/') {
        Some((org, name)) => part(org) && part(name) && !file_like,
        None => false,
    }
}

/// Whether `dir` holds everything the loader needs: config.json, tokenizer.json and the weights
/// (model.safetensors, or the index and every shard it names).
pub fn complete_checkpoint(dir: &Path) -> bool {
    let has = |n: &str| dir.join(n).is_file();
    if !has(hf::CONFIG) || !has(hf::TOKENIZER) {
        return false;
    }
    if has(hf::WEIGHTS) {
        return true;
    }
    match std::fs::read(dir.join(hf::INDEX)) {
        Ok(b) => hf::shard_names(&b).is_ok_and(|s| s.iter().all(|s| has(s))),
        Err(_) => false,
    }
}

/// Where checkpoints are cached and how to reach the hub, from the same environment variables
/// the Python `huggingface_hub` library reads.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The `hub` directory holding `models--ORG--NAME/`.
    pub cache_dir: PathBuf,
    pub endpoint: String,
    /// HF_HUB_OFFLINE: use the cache only.
    pub offline: bool,
    /// HF_TOKEN, else the token file beside the cache (`huggingface-cli login`).
    pub token: Option<String>,
    /// Draw download progress bars on stderr.
    pub progress: bool,
}

impl Hub {
    /// HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else
    /// ~/.cache/huggingface/hub; HF_ENDPOINT; HF_HUB_OFFLINE; HF_TOKEN.
    pub fn from_env() -> Result<Hub> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .ok_or_else(|| {
                Error::Io(
                    "cannot find the Hugging Face cache: set HF_HOME (or HOME) to a directory"
                        .into(),
                )
            })?;
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Hub {
            token: token.or_else(|| Cache::new(cache_dir.clone()).token()),
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT").unwrap_or_else(|_| ENDPOINT.to_string()),
            offline,
            progress: true,
        })
    }

    /// `models--ORG--NAME` in the cache.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot directory of a complete cached checkpoint: the one `refs/main` names, else
    /// the newest complete snapshot.
    pub fn cached(&self, repo: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        if let Ok(hash) = std::fs::read_to_string(dir.join("refs").join("main")) {
            let snap = dir.join("snapshots").join(hash.trim());
            if !hash.trim().is_empty() && complete_checkpoint(&snap) {
                return Some(snap);
            }
        }
        let mut snaps: Vec<(std::time::SystemTime, PathBuf)> =
            std::fs::read_dir(dir.join("snapshots"))
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| complete_checkpoint(p))
                .map(|p| {
                    let t = p
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    (t, p)
                })
                .collect();
        snaps.sort();
        snaps.pop().map(|(_, p)| p)
    }

    /// The local directory of `repo`: from the cache, else downloaded into it.
    pub fn resolve(&self, repo: &str) -> Result<PathBuf> {
        if let Some(dir) = self.cached(repo) {
            return Ok(dir);
        }
        if self.offline {
            return Err(Error::Io(format!(
                "{repo} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: unset it to download, or download the checkpoint and pass its directory: --model path/to/dir",
                self.cache_dir.display()
            )));
        }
        self.download(repo)
    }

    fn download(&self, repo: &str) -> Result<PathBuf> {
        let fail = |e: &dyn std::fmt::Display| {
            Error::Io(format!(
                "could not download {repo} from {} ({e}): check the network (a gated model also needs HF_TOKEN), or download the checkpoint and pass its directory: --model path/to/dir",
                self.endpoint
            ))
        };
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            .build()
            .map_err(|e| fail(&e))?;
        let r = api.model(repo.to_string());
        let listed: BTreeSet<String> = r
            .info()
            .map_err(|e| fail(&e))?
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .collect();
        let mut want: Vec<String> = Vec::new();
        for name in [hf::CONFIG, hf::TOKENIZER] {
            if !listed.contains(name) {
                return Err(Error::Format(format!(
                    "{repo} on {} has no {name}; sinkstream needs {}, {} and safetensors weights",
                    self.endpoint,
                    hf::CONFIG,
                    hf::TOKENIZER
                )));
            }
            want.push(name.to_string());
        }
        for name in [
            hf::TOKENIZER_CONFIG,
            hf::CHAT_TEMPLATE,
            "generation_config.json",
        ] {
            if listed.contains(name) {
                want.push(name.to_string());
            }
        }
        if listed.contains(hf::WEIGHTS) {
            want.push(hf::WEIGHTS.to_string());
        } else if listed.contains(hf::INDEX) {
            let index = r.get(hf::INDEX).map_err(|e| fail(&e))?;
            let bytes = std::fs::read(&index)
                .map_err(|e| Error::Io(format!("cannot read {}: {e}", index.display())))?;
            want.extend(hf::shard_names(&bytes)?);
        } else {
            return Err(Error::Format(format!(
                "{repo} on {} has no {} (nor {}): sinkstream reads safetensors weights only",
                self.endpoint,
                hf::WEIGHTS,
                hf::INDEX
            )));
        }
        let mut dir = None;
        for name in &want {
            let p = r.get(name).map_err(|e| fail(&e))?;
            if name == hf::CONFIG {
                dir = p.parent().map(Path::to_path_buf);
            }
        }
        let dir = dir.ok_or_else(|| fail(&"no snapshot directory"))?;
        if !complete_checkpoint(&dir) {
            return Err(Error::Io(format!(
                "the download of {repo} into {} is incomplete; run the command again",
                dir.display()
            )));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        for id in [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
            "meta-llama/Llama-3.2-1B",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        for p in [
            "model.gguf",
            "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "/abs/dir",
            "./dir/x",
            "a/b/c",
            "../x",
            "org/..",
            "dir/",
            "/x",
            "ckpt/model.safetensors",
        ] {
            assert!(!is_repo_id(p), "{p}");
        }
    }

    #[test]
    fn cache_folder_names() {
        let h = Hub {
            cache_dir: PathBuf::from("/c/hub"),
            endpoint: ENDPOINT.into(),
            offline: true,
            token: None,
            progress: false,
        };
        assert_eq!(
            h.repo_dir("HuggingFaceTB/SmolLM2-135M-Instruct"),
            PathBuf::from("/c/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct")
        );
    }
}
