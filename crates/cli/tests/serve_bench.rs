//! The numbers of BENCHMARKS.md's `sightline serve` section: the load test's 384 valid requests
//! (echo scoring and 12-token greedy chat replies on stories260K) run in one process, then over
//! HTTP by 1 and by 32 clients. Ignored by default (timing, not correctness):
//! `cargo test --release -p sightline --test serve_bench -- --ignored --nocapture`
//! (`SIGHTLINE_BENCH_DTYPE=bf16` runs both sides in bf16).

mod serve_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serve_support::{serve, valid_requests, STORIES};
use sightline_model::generate::{generate_ids, GenerateOptions};
use sightline_model::score::{score_encoded, EncodedRequest, ScoreOptions};
use sightline_vision::conversation::template;

const TOTAL: usize = 384;

fn summary(label: &str, wall: Duration, mut lat: Vec<Duration>) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
        TOTAL as f64 / wall.as_secs_f64(),
        p(0.5),
        p(0.9),
        p(0.99),
        wall.as_secs_f64()
    );
}

/// The dtype both sides compute in: `SIGHTLINE_BENCH_DTYPE` (`f32` by default, or `bf16`).
fn dtype() -> String {
    std::env::var("SIGHTLINE_BENCH_DTYPE").unwrap_or_else(|_| "f32".into())
}

fn in_process() -> (Duration, Vec<Duration>) {
    let opts = sightline_model::LoadOptions {
        dtype: sightline_model::parse_dtype(&dtype()).unwrap(),
        ..Default::default()
    };
    let m = sightline_model::load("builtin:stories260k", &opts).unwrap();
    let opts = ScoreOptions {
        batch_size: 1,
        shared_prefix: false,
        ..Default::default()
    };
    let mut lat = Vec::with_capacity(TOTAL);
    let started = Instant::now();
    for i in 0..TOTAL {
        let story = STORIES[(i % 8) / 2];
        let t = Instant::now();
        if i % 2 == 0 {
            let ids = m.tokenizer.encode_prompt(story).unwrap();
            let req = EncodedRequest {
                context: ids[..1].to_vec(),
                continuation: ids[1..].to_vec(),
            };
            score_encoded(&m.model, &[req], &opts, &mut |_, _| {}).unwrap();
        } else {
            let mut conv = template("v1").unwrap();
            conv.ask(story);
            let ids = m.tokenizer.encode_prompt(&conv.prompt()).unwrap();
            let g = GenerateOptions {
                max_new_tokens: 12,
                stop: vec!["</s>".into()],
                ..Default::default()
            };
            generate_ids(&m.model, &m.tokenizer, &ids, &g).unwrap();
        }
        lat.push(t.elapsed());
    }
    (started.elapsed(), lat)
}

fn over_http(base: &str, clients: usize) -> (Duration, Vec<Duration>) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let valid = valid_requests();
    let next = AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(TOTAL));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TOTAL {
                    break;
                }
                let (path, body) = &valid[i % valid.len()];
                let t = Instant::now();
                let r = agent
                    .post(&format!("{base}{path}"))
                    .header("Content-Type", "application/json")
                    .send(body.as_str())
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.into_body().read_to_string().unwrap();
                lat.lock().unwrap().push(t.elapsed());
            });
        }
    });
    (started.elapsed(), lat.into_inner().unwrap())
}

#[test]
#[ignore]
fn bench_http_vs_in_process() {
    println!("dtype {}", dtype());
    println!("| how | requests/s | p50 ms | p90 ms | p99 ms | wall s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let (wall, lat) = in_process();
    summary("in one process, serially", wall, lat);
    let server = serve(&["--dtype", &dtype()]);
    for clients in [1, 32] {
        let (wall, lat) = over_http(&server.base, clients);
        summary(&format!("sightline serve, {clients} client(s)"), wall, lat);
    }
    drop(server);
    // Again, so that a change in the machine's load shows.
    let (wall, lat) = in_process();
    summary("in one process, serially (again)", wall, lat);
}
