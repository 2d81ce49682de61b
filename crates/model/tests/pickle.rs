//! The `.bin` (PyTorch pickle) reader executes nothing, accepts only the globals torch's
//! tensor rebuilding needs, and refuses hostile sizes before allocating (issue 19 items 3-4).
//! Hostile pickles are written byte by byte here (opcodes from CPython's pickletools), wrapped
//! in the zip layout `torch.save` writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use sightline_model::pickle::read_all;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `torch.save`-style archive `archive/data.pkl` + `archive/data/<key>` entries.
fn archive(dir: &Path, pkl: &[u8], storages: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join("pytorch_model.bin");
    let file = std::fs::File::create(&path).expect("create");
    let mut z = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).expect("entry");
    z.write_all(pkl).expect("write");
    z.start_file("archive/byteorder", opts).expect("entry");
    z.write_all(b"little").expect("write");
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opts)
            .expect("entry");
        z.write_all(bytes).expect("write");
    }
    z.finish().expect("finish");
    path
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

/// LONG1 with 8 bytes: any non-negative i64.
fn long(n: i64) -> Vec<u8> {
    let mut v = vec![0x8a, 8];
    v.extend(n.to_le_bytes());
    v
}

fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![b'('];
    for i in items {
        v.extend(i);
    }
    v.push(b't');
    v
}

/// `_rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', numel), offset, size,
/// stride, False, OrderedDict())`, as torch writes it.
fn tensor(key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut v = b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec();
    let storage = tuple(&[
        unicode("storage"),
        b"ctorch\nFloatStorage\n".to_vec(),
        unicode(key),
        unicode("cpu"),
        long(numel),
    ]);
    let mut pid = storage;
    pid.push(b'Q');
    let ints = |xs: &[i64]| tuple(&xs.iter().map(|&x| long(x)).collect::<Vec<_>>());
    v.extend(tuple(&[
        pid,
        long(offset),
        ints(size),
        ints(stride),
        vec![0x89],
        b"ccollections\nOrderedDict\n)R".to_vec(),
    ]));
    v.push(b'R');
    v
}

/// `OrderedDict` with `entries` (alternating key and value opcodes) set into it.
fn state_dict(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v = b"\x80\x02ccollections\nOrderedDict\n)Rq\x00(".to_vec();
    for e in entries {
        v.extend(e);
    }
    v.extend(b"u.");
    v
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn refused(pkl: &[u8], storages: &[(&str, &[u8])]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = archive(dir.path(), pkl, storages);
    let e = read_all(&path).expect_err("refused").to_string();
    assert!(
        e.starts_with(&format!(
            "{}: not a readable PyTorch checkpoint: ",
            path.display()
        )),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn real_torch_save_files_read_as_candle_reads_them() -> anyhow::Result<()> {
    for f in [
        "tests/fixtures/llama/tiny-llama3-bin/pytorch_model.bin",
        "tests/fixtures/llava/tiny-stage1/mm_projector.bin",
        "tests/fixtures/lora/tiny-gqa-untied-rslora-r2/adapter_model.bin",
        "tests/fixtures/clip/vision-tanh-bin/pytorch_model.bin",
    ] {
        let path = root().join(f);
        let ours = read_all(&path)?;
        let mut theirs = candle_core::pickle::read_all(&path)?;
        theirs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ours_sorted = ours.clone();
        ours_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ours_sorted.len(), theirs.len(), "{f}");
        assert!(!ours.is_empty(), "{f}");
        for ((n1, t1), (n2, t2)) in ours_sorted.iter().zip(&theirs) {
            assert_eq!(n1, n2, "{f}");
            assert_eq!(t1.dtype(), t2.dtype(), "{f} {n1}");
            assert_eq!(t1.dims(), t2.dims(), "{f} {n1}");
            let diff = (t1.to_dtype(candle_core::DType::F64)?
                - t2.to_dtype(candle_core::DType::F64)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
            assert_eq!(diff, 0.0, "{f} {n1}");
        }
    }
    Ok(())
}

#[test]
fn a_hand_built_state_dict_reads_with_offsets_and_strides() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    let pkl = state_dict(&[
        unicode("w"),
        tensor("0", 6, 0, &[2, 3], &[3, 1]),
        // A transposed view of the same storage: shape (3, 2), strides (1, 3).
        unicode("w_t"),
        tensor("0", 6, 0, &[3, 2], &[1, 3]),
        // The last two elements, at an offset.
        unicode("tail"),
        tensor("0", 6, 4, &[2], &[1]),
        unicode("epoch"),
        b"K\x03".to_vec(),
    ]);
    let path = archive(dir.path(), &pkl, &[("0", &data)]);
    let t = read_all(&path)?;
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w", "w_t", "tail"]);
    assert_eq!(t[0].1.to_vec2::<f32>()?, [[0., 1., 2.], [3., 4., 5.]]);
    assert_eq!(t[1].1.to_vec2::<f32>()?, [[0., 3.], [1., 4.], [2., 5.]]);
    assert_eq!(t[2].1.to_vec1::<f32>()?, [4., 5.]);
    Ok(())
}

/// An empty tensor is read as an empty tensor of its shape, also when its offset lies past its
/// (empty) storage: that view panicked the reader (found by fuzzing; fuzz/regressions/pickle/).
#[test]
fn empty_views_read_wherever_their_offset_points() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pkl = state_dict(&[
        unicode("none"),
        tensor("0", 0, 64, &[0], &[1]),
        unicode("rows"),
        tensor("0", 0, 0, &[0, 3], &[3, 1]),
    ]);
    let path = archive(dir.path(), &pkl, &[("0", &[])]);
    let t = read_all(&path)?;
    assert_eq!(t[0].1.dims(), [0]);
    assert_eq!(t[1].1.dims(), [0, 3]);
    Ok(())
}

#[test]
fn globals_outside_torchs_rebuilding_are_refused_by_name() {
    let marker = std::env::temp_dir().join(format!("sightline-pwned-{}", std::process::id()));
    let cmd = format!("touch {}", marker.display());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // os.system("touch ...") via GLOBAL + REDUCE, the classic payload.
        (
            [
                b"\x80\x02cos\nsystem\n".to_vec(),
                unicode(&cmd),
                b"\x85R.".to_vec(),
            ]
            .concat(),
            "os.system",
        ),
        (
            [
                b"\x80\x02c__builtin__\neval\n".to_vec(),
                unicode("1"),
                b"\x85R.".to_vec(),
            ]
            .concat(),
            "__builtin__.eval",
        ),
        // Protocol 4's STACK_GLOBAL spelling.
        (
            b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93X\x01\x00\x00\x001\x85R.".to_vec(),
            "builtins.exec",
        ),
        // Inside an otherwise normal state dict, after a good tensor.
        (
            state_dict(&[
                unicode("w"),
                tensor("0", 1, 0, &[1], &[1]),
                unicode("x"),
                [
                    b"csubprocess\nPopen\n".to_vec(),
                    unicode("id"),
                    b"\x85R".to_vec(),
                ]
                .concat(),
            ]),
            "subprocess.Popen",
        ),
        // A torch name that is not a tensor rebuild is refused too.
        (b"\x80\x02ctorch\nload\n.".to_vec(), "torch.load"),
    ];
    for (pkl, name) in cases {
        let e = refused(&pkl, &[("0", &f32_bytes(&[1.0]))]);
        assert!(e.contains(&format!("global `{name}`")), "{e}");
        assert!(e.contains("refused without running anything"), "{e}");
    }
    // Opcodes that construct objects by calling classes are refused whatever they name.
    for (pkl, op) in [
        (
            b"\x80\x02(X\x02\x00\x00\x00idios\nsystem\n.".to_vec(),
            "INST",
        ),
        (b"\x80\x02)(o.".to_vec(), "OBJ"),
        (b"\x80\x02N)\x81.".to_vec(), "NEWOBJ"),
        (b"\x80\x02\x82\x01.".to_vec(), "EXT"),
        (b"\x80\x02P1\n.".to_vec(), "PERSID"),
    ] {
        let e = refused(&pkl, &[]);
        assert!(e.contains(op), "{op}: {e}");
    }
    assert!(!marker.exists(), "a pickle ran a command");
}

#[test]
fn hostile_sizes_are_refused_before_allocation() {
    let one = f32_bytes(&[1.0]);
    // A storage declaring 10^12 floats (4 TB) backed by 4 bytes.
    let e = refused(
        &state_dict(&[
            unicode("w"),
            tensor(
                "0",
                1_000_000_000_000,
                0,
                &[1_000_000, 1_000_000],
                &[1_000_000, 1],
            ),
        ]),
        &[("0", &one)],
    );
    assert!(e.contains("tensor `w`"), "{e}");
    assert!(e.contains("1000000000000"), "{e}");
    // A view that reaches past its (honest) storage.
    let e = refused(
        &state_dict(&[unicode("w"), tensor("0", 1, 0, &[1000], &[1])]),
        &[("0", &one)],
    );
    assert!(e.contains("reaches past its storage"), "{e}");
    // Shapes whose product overflows.
    let e = refused(
        &state_dict(&[
            unicode("w"),
            tensor("0", 1, 0, &[i64::MAX, i64::MAX], &[0, 0]),
        ]),
        &[("0", &one)],
    );
    assert!(e.contains("overflows"), "{e}");
    // A string declaring 4 GB in a 20-byte pickle.
    let e = refused(b"\x80\x02X\xff\xff\xff\xff.", &[]);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn deep_nesting_and_memo_bombs_are_refused() {
    // 1,000,000 nested 1-tuples: dropping that recursively would overflow the stack.
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    let e = refused(&deep, &[]);
    assert!(e.contains("nests deeper than 100 levels"), "{e}");

    // A "billion laughs": a 10,000-item list, then 100 rounds of pairing the previous value
    // with itself through the memo. 2^100 items if expanded; shared, but charged.
    let mut bomb = b"\x80\x02]q\x00(".to_vec();
    bomb.extend(std::iter::repeat_n(b'N', 10_000));
    bomb.extend(b"e");
    for _ in 0..100 {
        bomb.extend(b"q\x00h\x00h\x00\x86");
    }
    bomb.push(b'.');
    let e = refused(&bomb, &[]);
    assert!(e.contains("builds more than"), "{e}");

    // Memoizing a growing list under a new id before each APPEND keeps every copy.
    let mut quad = b"\x80\x02]".to_vec();
    for i in 0..200_000u32 {
        quad.push(b'r');
        quad.extend(i.to_le_bytes());
        quad.extend(b"Na");
    }
    quad.push(b'.');
    let e = refused(&quad, &[]);
    assert!(e.contains("builds more than"), "{e}");
}
