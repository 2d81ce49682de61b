//! The online half: `hf-hub`'s blocking API, pinned to the commit the revision points to
//! now, so that every file lands in one snapshot even if the branch moves meanwhile.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use super::{is_commit, shard_names, HubEnv, HubId, Need};

/// Downloads what `need` reads from the repository into the cache; returns the commit and
/// its snapshot directory. Errors are one line of text (the caller adds the context).
pub(super) fn fetch(id: &HubId, need: Need, env: &HubEnv) -> Result<(String, PathBuf), String> {
    let api = ApiBuilder::new()
        .with_cache_dir(env.cache_dir.clone())
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let info = api
        .repo(Repo::with_revision(
            id.repo.clone(),
            RepoType::Model,
            id.revision.clone(),
        ))
        .info()
        .map_err(|e| explain(e, "the repository listing", env))?;
    let commit = checked_commit(info.sha)?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let repo_dir = env.cache_dir.join(id.folder());
    let dir = repo_dir.join("snapshots").join(&commit);
    let commit_ref = repo_dir.join("refs").join(&commit);
    let had_commit_ref = commit_ref.exists();
    let pinned = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        commit.clone(),
    ));
    let get = |file: &str| -> Result<(), String> {
        if dir.join(file).is_file() {
            return Ok(());
        }
        pinned
            .download(file)
            .map(|_| ())
            .map_err(|e| explain(e, file, env))
    };
    for f in need.required() {
        if !listed.contains(f) {
            return Err(format!("the repository (commit {commit}) has no {f}"));
        }
        get(f)?;
    }
    for f in need.optional().iter().filter(|f| listed.contains(f)) {
        get(f)?;
    }
    if let Some(w) = need.weights().iter().find(|w| listed.contains(w)) {
        get(w)?;
        if w.ends_with(".index.json") {
            for s in shard_names(&dir.join(w)).map_err(|e| e.to_string())? {
                get(&s)?;
            }
        }
    }
    // hf-hub records a pinned download under refs/{commit}; huggingface_hub records the
    // revision asked for instead.
    if !had_commit_ref && id.revision != commit {
        let _ = std::fs::remove_file(&commit_ref);
    }
    write_ref(&repo_dir, &id.revision, &commit)?;
    Ok((commit, dir))
}

/// The commit the server's listing names, which becomes a folder of the cache
/// (`snapshots/<commit>`, `refs/<commit>`): refused unless it is a 40-hex commit id, so that a
/// rogue endpoint (`HF_ENDPOINT`) cannot name `../../..` and have files written outside it.
fn checked_commit(sha: String) -> Result<String, String> {
    if is_commit(&sha) {
        Ok(sha)
    } else {
        Err(format!(
            "the repository listing names the commit {sha:?}, not a 40-hex commit id (it would \
             name a folder of the cache)"
        ))
    }
}

/// `refs/{revision}` = commit, written to a temp file and renamed.
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), String> {
    if revision == commit {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    // `.<name>.tmp-<pid>`: concurrent downloads of one repository never share a temporary.
    let tmp = sightline_guard::temp::temp_path(&path);
    std::fs::create_dir_all(path.parent().unwrap_or(repo_dir))
        .and_then(|_| std::fs::write(&tmp, commit))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One line naming the file and the endpoint; a refusal suggests HF_TOKEN.
fn explain(e: ApiError, what: &str, env: &HubEnv) -> String {
    let msg = e.to_string().replace('\n', " ");
    let hint = if msg.contains("401") || msg.contains("403") {
        " (a gated or private repository: set HF_TOKEN)"
    } else {
        ""
    };
    format!("fetching {what} from {}: {msg}{hint}", env.endpoint)
}

#[cfg(test)]
mod tests {
    use super::checked_commit;

    #[test]
    fn only_a_commit_id_may_name_a_cache_folder() {
        let c = "0123456789abcdef0123456789abcdef01234567".to_string();
        assert_eq!(checked_commit(c.clone()), Ok(c));
        for bad in ["../../../../tmp/x", "/etc", "main", ""] {
            let e = checked_commit(bad.into()).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
