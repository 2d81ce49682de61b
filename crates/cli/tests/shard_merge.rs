//! `sightline eval --shard I/N` + `sightline merge`: the merged results and samples are the
//! unsharded run's, byte for byte apart from its timing (`date`,
//! `total_evaluation_time_seconds`), for 1 to 4 shards (4 as concurrent processes), for a
//! shard killed and rerun with its cache, and for an image task under a corruption; a missing,
//! duplicated or mismatched shard is an error naming it.

mod mm_eval_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mm_eval_support::{path, pope_image_root, read_json, stderr};

/// Log-likelihood (mc1, mc2, ETHICS) and generation (truthfulqa_gen) requests.
const TEXT: [&str; 8] = [
    "eval",
    "--tasks",
    "truthfulqa_mc1,truthfulqa_mc2,ethics_cm,truthfulqa_gen",
    "--limit",
    "12",
    "--batch-size",
    "4",
    "--log-samples",
];

fn sightline(args: &[&str], more: &[&Path]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sightline"));
    c.args(args).args(more);
    c
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Runs `base` as shard `i` of `n` into `dir` (spawned, not waited for).
fn shard(base: &[&str], i: usize, n: usize, dir: &Path, extra: &[&str]) -> Child {
    let spec = format!("{i}/{n}");
    sightline(base, &[])
        .args(["--shard", &spec])
        .args(extra)
        .arg("--output")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn merge(dirs: &[&Path], out: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sightline"));
    c.arg("merge").args(dirs).arg("--output").arg(out);
    c.output().unwrap()
}

/// `results.json` without the lines that time the run (`date`, the evaluation time) and the
/// top-level fields in `skip`.
fn untimed(p: &Path, skip: &[&str]) -> String {
    let skipped = |l: &str| {
        ["date", "total_evaluation_time_seconds"]
            .iter()
            .chain(skip)
            .any(|k| l.trim_start().starts_with(&format!("\"{k}\":")))
    };
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !skipped(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every results and samples file of `want` is in `got`, equal (results up to timing).
fn assert_same_outputs(want: &Path, got: &Path) {
    assert_same_outputs_but(want, got, &[]);
}

/// [`assert_same_outputs`], results also up to the top-level fields in `skip`.
fn assert_same_outputs_but(want: &Path, got: &Path, skip: &[&str]) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(want)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    for p in names {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let other = got.join(&name);
        if name.starts_with("results") {
            assert_eq!(untimed(&p, skip), untimed(&other, skip), "{name}");
        } else {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&other).unwrap(),
                "{name}"
            );
        }
    }
}

fn shard_file(dir: &Path, i: usize, n: usize) -> PathBuf {
    dir.join(format!("shard-{i}-of-{n}.json"))
}

#[test]
fn one_to_four_shards_merge_to_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    ok(sightline(&TEXT, &[])
        .arg("--output")
        .arg(&plain)
        .output()
        .unwrap());
    for n in 1..=4 {
        let dir = tmp.path().join(format!("shards{n}"));
        // Four at once for n = 4 (one process per shard, as on a cluster); one by one else.
        if n == 4 {
            let kids: Vec<Child> = (0..n).map(|i| shard(&TEXT, i, n, &dir, &[])).collect();
            for k in kids {
                ok(k.wait_with_output().unwrap());
            }
        } else {
            for i in 0..n {
                // Each shard logs what it computes: its own requests, and nothing else.
                let cache = tmp.path().join(format!("cache{n}-{i}"));
                let extra = ["--cache", cache.to_str().unwrap()];
                ok(shard(&TEXT, i, n, &dir, &extra).wait_with_output().unwrap());
                let logged = std::fs::read_to_string(cache.join("requests.jsonl")).unwrap();
                let answers = read_json(&shard_file(&dir, i, n))["responses"]
                    .as_array()
                    .unwrap()
                    .len();
                assert_eq!(logged.lines().count(), answers, "shard {i}/{n}");
            }
        }
        // Every shard has work, and the work is split without overlap.
        let (mut units, mut answers) = (Vec::new(), 0);
        for i in 0..n {
            let f = read_json(&shard_file(&dir, i, n));
            answers += f["responses"].as_array().unwrap().len();
            assert_eq!(f["shard"], serde_json::json!({"index": i, "count": n}));
            let mine = f["units"].as_array().unwrap().clone();
            assert!(!mine.is_empty(), "shard {i}/{n} got no work");
            units.extend(mine);
        }
        let plan = &read_json(&shard_file(&dir, 0, n))["plan"];
        assert_eq!(units.len() as u64, plan["units"].as_u64().unwrap());
        assert_eq!(answers as u64, plan["requests"].as_u64().unwrap());
        let merged = tmp.path().join(format!("merged{n}"));
        let o = ok(merge(&[&dir], &merged));
        assert!(String::from_utf8_lossy(&o.stdout).contains("|truthfulqa_mc2"));
        assert_same_outputs(&plain, &merged);
    }
}

#[test]
fn missing_duplicated_and_mismatched_shards_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "eval",
        "--tasks",
        "truthfulqa_mc1,ethics_cm",
        "--limit",
        "6",
    ];
    let all = tmp.path().join("all");
    for i in 0..3 {
        ok(shard(&base, i, 3, &all, &[]).wait_with_output().unwrap());
    }
    // The shard file is not replaced without --overwrite.
    let again = shard(&base, 1, 3, &all, &[]).wait_with_output().unwrap();
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // A folder with shards 0 and 2 of 3: shard 1 is missing.
    let part = tmp.path().join("part");
    std::fs::create_dir(&part).unwrap();
    for i in [0, 2] {
        std::fs::copy(shard_file(&all, i, 3), shard_file(&part, i, 3)).unwrap();
    }
    let o = merge(&[&part], &tmp.path().join("m1"));
    assert!(
        stderr(&o).contains("shard 1/3 missing: none of") && stderr(&o).contains("part"),
        "{}",
        stderr(&o)
    );
    // Shard 0 twice.
    let o = merge(&[&all, &part], &tmp.path().join("m2"));
    assert!(
        stderr(&o).contains("shard 0/3 appears twice"),
        "{}",
        stderr(&o)
    );
    // Shard 1 run with another --limit: the field and both values are named.
    let other = tmp.path().join("other");
    let mut limit7 = base;
    limit7[4] = "7";
    ok(shard(&limit7, 1, 3, &other, &[])
        .wait_with_output()
        .unwrap());
    let o = merge(&[&part, &other], &tmp.path().join("m3"));
    assert!(
        stderr(&o).contains("args.limit is 6 in") && stderr(&o).contains("but 7 in"),
        "{}",
        stderr(&o)
    );
    // Shards of another division (N = 2) do not mix with these.
    let two = tmp.path().join("two");
    ok(shard(&base, 1, 2, &two, &[]).wait_with_output().unwrap());
    let o = merge(&[&part, &two], &tmp.path().join("m4"));
    assert!(stderr(&o).contains("the shard count N"), "{}", stderr(&o));
    // Bad specs and a missing --output are one-line errors.
    for (spec, want) in [("3/3", "I must be below N"), ("0/0", "at least 1")] {
        let o = sightline(&base, &[])
            .args(["--shard", spec, "--output"])
            .arg(tmp.path().join("x"))
            .output()
            .unwrap();
        assert!(stderr(&o).contains(want), "{spec}: {}", stderr(&o));
    }
    let o = sightline(&base, &[])
        .args(["--shard", "0/2"])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("--shard needs --output"),
        "{}",
        stderr(&o)
    );
    // The complete set merges, and the result is not replaced without --overwrite.
    let m = tmp.path().join("m5");
    ok(merge(&[&all], &m));
    let o = merge(&[&all], &m);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

#[test]
fn killed_shard_reruns_alone_with_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "eval",
        "--tasks",
        "ethics_cm,truthfulqa_mc2,truthfulqa_gen",
        "--limit",
        "24",
        "--batch-size",
        "4",
        "--log-samples",
    ];
    let plain = tmp.path().join("plain");
    ok(sightline(&base, &[])
        .arg("--output")
        .arg(&plain)
        .output()
        .unwrap());
    let dir = tmp.path().join("shards");
    ok(shard(&base, 0, 2, &dir, &[]).wait_with_output().unwrap());

    // Shard 1, SIGKILLed once some of its answers are in its cache.
    let cache = tmp.path().join("cache1");
    let cache_arg = cache.to_str().unwrap();
    let mut child = shard(&base, 1, 2, &dir, &["--cache", cache_arg]);
    let log = cache.join("requests.jsonl");
    let start = Instant::now();
    let lines = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while lines() < 20 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    assert!(
        !child.wait().unwrap().success(),
        "the shard finished before it could be killed"
    );
    assert!(lines() >= 20);
    assert!(
        !shard_file(&dir, 1, 2).exists(),
        "a killed shard left a file"
    );
    let o = merge(&[&dir], &tmp.path().join("early"));
    assert!(stderr(&o).contains("shard 1/2 missing"), "{}", stderr(&o));

    // Rerun alone with the same cache: it reuses what it logged and completes the set.
    ok(shard(&base, 1, 2, &dir, &["--cache", cache_arg])
        .wait_with_output()
        .unwrap());
    let hits = read_json(&shard_file(&dir, 1, 2))["run"]["cache_hits"]
        .as_u64()
        .unwrap();
    assert!(hits >= 20, "only {hits} answers reused");
    let merged = tmp.path().join("merged");
    ok(merge(&[&dir], &merged));
    // The merge counts the answers the shards took from their caches; the plain run took none.
    assert_same_outputs_but(&plain, &merged, &["cached_requests"]);
    assert_eq!(
        read_json(&merged.join("results.json"))["cached_requests"],
        hits
    );
}

/// POPE (three splits) on the tiny LLaVA under a corruption: image requests are cut into the
/// model's windows (16 prompts at batch size 1) and the windows dealt to shards.
#[test]
fn image_task_under_a_corruption_shards_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("coco");
    std::fs::create_dir(&images).unwrap();
    pope_image_root(&images);
    let model = path("tests/fixtures/mm_eval/tiny-llava-hf-2k");
    let base = [
        "eval",
        "--model",
        &model,
        "--tasks",
        "pope",
        "--image-root",
        images.to_str().unwrap(),
        "--limit",
        "6",
        "--protocol",
        "greedy",
        "--batch-size",
        "1",
        "--corrupt",
        "gaussian_noise:2",
        "--log-samples",
    ];
    let plain = tmp.path().join("plain");
    ok(sightline(&base, &[])
        .arg("--output")
        .arg(&plain)
        .output()
        .unwrap());
    assert!(plain.join("results_gaussian_noise_2.json").is_file());
    let dir = tmp.path().join("shards");
    let kids: Vec<Child> = (0..2).map(|i| shard(&base, i, 2, &dir, &[])).collect();
    for k in kids {
        ok(k.wait_with_output().unwrap());
    }
    for i in 0..2 {
        let f = read_json(&dir.join(format!("shard-{i}-of-2_gaussian_noise_2.json")));
        assert!(!f["responses"].as_array().unwrap().is_empty(), "shard {i}");
    }
    let merged = tmp.path().join("merged");
    ok(merge(&[&dir], &merged));
    assert_same_outputs(&plain, &merged);
}

/// The merged outputs are named by the shards' recorded flags (`samples_<task><suffix>.jsonl`,
/// the suffix from `--corrupt`): a shard file edited to name a task or corruption that would
/// climb out of `--output` is refused in one line, as the flag itself would be, and nothing
/// is written.
#[test]
fn shards_naming_a_task_or_corruption_outside_the_output_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shards");
    let base = ["eval", "--tasks", "truthfulqa_mc1", "--limit", "2"];
    ok(shard(&base, 0, 1, &dir, &["--log-samples"])
        .wait_with_output()
        .unwrap());
    let file = shard_file(&dir, 0, 1);
    let original = read_json(&file);
    for (flag, hostile, says) in [
        ("tasks", "../../../x", "unknown task `../../../x`"),
        ("corrupt", "../../../x:1", "--corrupt ../../../x:1"),
    ] {
        let mut v = original.clone();
        v["settings"]["args"][flag] = serde_json::json!(hostile);
        std::fs::write(&file, v.to_string()).unwrap();
        let out = tmp.path().join("merged");
        let o = merge(&[&dir], &out);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
        assert!(err.contains(says), "{err}");
        assert!(!out.exists(), "a refused merge wrote {}", out.display());
        assert!(!tmp.path().join("x").exists() && !Path::new("/x").exists());
    }
}

/// A shard file's recorded data paths are read, never trusted further: the merge says where it
/// reads, refuses data that does not give the requests the shards hashed, and lets image names
/// leave `--image-root` only when the merge itself is given `--allow-outside-paths` (a shard
/// run with that flag records it, but a file cannot grant it).
#[test]
fn recorded_data_paths_are_checked_and_outside_images_need_the_merges_own_flag() {
    let tmp = tempfile::tempdir().unwrap();
    // Text: the shards read a copy of the ETHICS data that changes after they ran.
    let data = tmp.path().join("data");
    let cm = data.join("ethics/commonsense");
    std::fs::create_dir_all(&cm).unwrap();
    let csv = cm.join("cm_test.csv");
    std::fs::copy(path("data/ethics/commonsense/cm_test.csv"), &csv).unwrap();
    let base = [
        "eval",
        "--tasks",
        "ethics_cm",
        "--limit",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let text = tmp.path().join("text");
    ok(shard(&base, 0, 1, &text, &[]).wait_with_output().unwrap());
    let o = ok(merge(&[&text], &tmp.path().join("t1")));
    let want = format!(
        "reading task data where the shards did: --data-dir {}",
        data.display()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // Every scenario in the first person now says "We" (the documents are shuffled before
    // --limit takes two, so the edit reaches all of them).
    let original = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, original.replace(",I ", ",We ")).unwrap();
    let out = tmp.path().join("t2");
    let o = merge(&[&text], &out);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ethics_cm: its requests here hash to")
            && err.contains("not what the shards read"),
        "{err}"
    );
    assert!(!out.exists(), "a refused merge wrote {}", out.display());

    // Images: POPE's image names lead through symlinks out of --image-root.
    let photos = tmp.path().join("coco");
    std::fs::create_dir(&photos).unwrap();
    pope_image_root(&photos);
    let root = tmp.path().join("links");
    std::fs::create_dir(&root).unwrap();
    for e in std::fs::read_dir(&photos).unwrap() {
        let e = e.unwrap().path();
        std::os::unix::fs::symlink(&e, root.join(e.file_name().unwrap())).unwrap();
    }
    let model = path("tests/fixtures/mm_eval/tiny-llava-hf-2k");
    let base = [
        "eval",
        "--model",
        &model,
        "--tasks",
        "pope_random",
        "--image-root",
        root.to_str().unwrap(),
        "--limit",
        "2",
        "--protocol",
        "greedy",
        "--allow-outside-paths",
    ];
    let images = tmp.path().join("images");
    ok(shard(&base, 0, 1, &images, &[]).wait_with_output().unwrap());
    let out = tmp.path().join("i1");
    let o = merge(&[&images], &out);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("symlink out of") && err.contains("--allow-outside-paths"),
        "{err}"
    );
    assert!(!out.exists(), "a refused merge wrote {}", out.display());
    let mut c = Command::new(env!("CARGO_BIN_EXE_sightline"));
    c.arg("merge").arg(&images).arg("--output").arg(&out);
    ok(c.arg("--allow-outside-paths").output().unwrap());
    assert!(out.join("results.json").is_file());
}
