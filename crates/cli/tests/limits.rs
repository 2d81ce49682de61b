//! Resource bounds end to end (issue 19 item 3): each hostile file ends in one error line,
//! exit code 1, and a peak resident memory under 200 MB (measured per child with `wait4`).
//! The hostile files are tiny on disk: sizes are declared (sparse files, headers), not real.

mod data_support;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use data_support::{path, root, tmp};

/// Peak resident memory a refusal may take.
const PEAK_LIMIT_KB: i64 = 200 * 1024;

/// Runs sightline with `args`; returns its one `error: ...` line after checking exit code 1,
/// one stderr line and the peak memory.
fn refused<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    // Reaped by `wait4` below, which also reports its peak memory.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).map(|_| s)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is our own unwaited child; wait4 reaps it and fills `status`/`usage`.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let err = reader.join().expect("reader").expect("stderr text");
    let code = std::process::ExitStatus::from_raw(status).code();
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    // ru_maxrss is in kilobytes on Linux.
    assert!(
        usage.ru_maxrss < PEAK_LIMIT_KB,
        "peak {} MB: {err}",
        usage.ru_maxrss / 1024
    );
    lines[0].to_string()
}

/// A copy of the tiny LLaMA fixture's config and tokenizer, with `weights` written by the
/// caller, and a one-line requests file.
fn model_dir(dir: &Path) -> (PathBuf, String) {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    let src = root().join("tests/fixtures/llama/tiny-llama3-bin");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    let req = dir.join("requests.jsonl");
    std::fs::write(&req, "{\"context\": \"a\", \"continuation\": \" b\"}\n").unwrap();
    (m, req.display().to_string())
}

fn score<'a>(model: &'a str, req: &'a str) -> [&'a str; 5] {
    ["score", "--model", model, "--requests", req]
}

#[test]
fn safetensors_with_a_2gb_header_or_a_100gb_tensor() {
    let d = tmp();
    let (m, req) = model_dir(d.path());
    let st = m.join("model.safetensors");
    // A header length of 2 GiB, in a sparse file that long.
    let mut f = std::fs::File::create(&st).unwrap();
    f.write_all(&(2u64 << 30).to_le_bytes()).unwrap();
    f.set_len((2u64 << 30) + 8).unwrap();
    drop(f);
    let ms = m.display().to_string();
    let err = refused(&score(&ms, &req));
    assert!(
        err.contains("model.safetensors: not a valid safetensors file"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("header"), "{err}");

    // A 100 GB tensor declared in a 200-byte file.
    let header = br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[25000000000],"data_offsets":[0,100000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    std::fs::write(&st, bytes).unwrap();
    let err = refused(&score(&ms, &req));
    assert!(
        err.contains("model.safetensors: not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn a_pickle_that_declares_a_huge_storage_or_nests_deeply() {
    let d = tmp();
    let (m, req) = model_dir(d.path());
    let bin = m.join("pytorch_model.bin");
    let write = |pkl: &[u8], storage: &[u8]| {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&bin).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(storage).unwrap();
        z.finish().unwrap();
    };
    // {"model.embed_tokens.weight": _rebuild_tensor_v2(storage of 10^12 floats, 0,
    // (10^6, 10^6), (10^6, 1), False, OrderedDict())} with 4 bytes of storage.
    let long = |n: i64| [vec![0x8a, 8], n.to_le_bytes().to_vec()].concat();
    let unicode = |s: &str| {
        [
            vec![b'X'],
            (s.len() as u32).to_le_bytes().to_vec(),
            s.into(),
        ]
        .concat()
    };
    let pkl = [
        b"\x80\x02}(".to_vec(),
        unicode("model.embed_tokens.weight"),
        b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec(),
        unicode("storage"),
        b"ctorch\nFloatStorage\n".to_vec(),
        unicode("0"),
        unicode("cpu"),
        long(1_000_000_000_000),
        b"tQ".to_vec(),
        long(0),
        b"(".to_vec(),
        long(1_000_000),
        long(1_000_000),
        b"t(".to_vec(),
        long(1_000_000),
        long(1),
        b"t\x89ccollections\nOrderedDict\n)RtRu.".to_vec(),
    ]
    .concat();
    write(&pkl, &[0; 4]);
    let ms = m.display().to_string();
    let err = refused(&score(&ms, &req));
    assert!(
        err.contains(
            "storage `0` declares 1000000000000 F32 elements but the archive holds 4 bytes"
        ),
        "{err}"
    );

    // Ten million nested tuples.
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 10_000_000));
    deep.push(b'.');
    write(&deep, &[]);
    let err = refused(&score(&ms, &req));
    assert!(err.contains("nests deeper than 100 levels"), "{err}");
}

#[test]
fn json_and_toml_nesting_bombs() {
    let d = tmp();
    let deep = |open: &str, n: usize| open.repeat(n);
    // A JSON array file, a JSON Lines file, a model's config.json and a run file, each nested
    // a million deep.
    let arr = d.path().join("bomb.json");
    std::fs::write(&arr, deep("[", 1_000_000)).unwrap();
    let lines = d.path().join("bomb.jsonl");
    std::fs::write(&lines, format!("{{\"id\": {}", deep("[", 1_000_000))).unwrap();
    for f in [&arr, &lines] {
        let err = refused(&["data", "stats", &f.display().to_string()]);
        assert!(err.contains("recursion limit"), "{err}");
    }
    let (m, req) = model_dir(d.path());
    std::fs::write(m.join("config.json"), deep("{\"a\":", 1_000_000)).unwrap();
    let err = refused(&score(&m.display().to_string(), &req));
    assert!(err.contains("config.json"), "{err}");
    let toml = d.path().join("run.toml");
    std::fs::write(&toml, format!("a = {}", deep("[", 1_000_000))).unwrap();
    let err = refused(&["train", "--config", &toml.display().to_string()]);
    assert!(err.contains("run.toml"), "{err}");
}

/// A PNG declaring `w`×`h` RGB pixels: signature, IHDR, a 2-byte IDAT, IEND (CRCs included).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(chunk(b"IHDR", &ihdr));
    v.extend(chunk(b"IDAT", b"\x78\x9c"));
    v.extend(chunk(b"IEND", b""));
    v
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A baseline JPEG's SOI + SOF0 declaring `w`×`h` 3-component pixels, then EOI.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8];
    v.extend(h.to_be_bytes());
    v.extend(w.to_be_bytes());
    v.extend([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    v.extend([0xFF, 0xD9]);
    v
}

#[test]
fn images_whose_header_claims_billions_of_pixels() {
    let d = tmp();
    let out = d.path().join("out").display().to_string();
    for (name, bytes, dims) in [
        ("huge.png", png_header(100_000, 100_000), "100000x100000"),
        ("huge.jpg", jpeg_header(65_000, 65_000), "65000x65000"),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = refused(&[
            "data",
            "corrupt",
            &p.display().to_string(),
            &out,
            "--corruption",
            "gaussian_noise",
            "--severity",
            "1",
        ]);
        assert!(err.contains(name), "{err}");
        assert!(err.contains(dims), "{err}");
        assert!(err.contains("SIGHTLINE_MAX_IMAGE_PIXELS"), "{err}");
    }
}

#[test]
fn a_tokenizer_too_big_to_parse() {
    let d = tmp();
    let (m, _) = model_dir(d.path());
    // 10 million entries take over 100 MB of JSON; a sparse file of that size stands in.
    let f = std::fs::File::create(m.join("tokenizer.json")).unwrap();
    f.set_len(150 << 20).unwrap();
    let err = refused(&[
        "data",
        "stats",
        &path("data/training/llava/blip_laion_cc_sbu_100.json"),
        "--tokenizer",
        &m.display().to_string(),
    ]);
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(err.contains("SIGHTLINE_MAX_TOKENIZER_BYTES"), "{err}");
}

/// `MemAvailable` in bytes.
fn available_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A bf16 checkpoint (sparse weight file) whose weights fit in memory in bf16 but not in f32:
/// `--dtype f32` is refused before anything is read, naming the dtype that fits.
#[test]
fn an_upcast_that_cannot_fit_in_memory() {
    let d = tmp();
    let (m, req) = model_dir(d.path());
    let cfg = m.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "\"torch_dtype\": \"float32\"",
        "\"torch_dtype\": \"bfloat16\"",
    );
    assert!(
        text.contains("bfloat16"),
        "the fixture config names its torch_dtype"
    );
    std::fs::write(&cfg, text).unwrap();
    // 60% of the available memory in bf16: 120% once upcast to f32.
    let bytes = available_memory() / 10 * 6;
    let f = std::fs::File::create(m.join("model.safetensors")).unwrap();
    f.set_len(bytes).unwrap();
    let ms = m.display().to_string();
    let mut args = score(&ms, &req).to_vec();
    args.extend(["--dtype", "f32"]);
    let err = refused(&args);
    assert!(err.contains("the weights need"), "{err}");
    assert!(err.contains("in f32 but"), "{err}");
    assert!(
        err.contains("--dtype bf16 needs") && err.contains("(fits)"),
        "{err}"
    );
}
