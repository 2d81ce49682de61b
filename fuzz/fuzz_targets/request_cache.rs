#![no_main]
// Entry point and what it covers: sightline_fuzzing::eval::request_cache.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::eval::request_cache(data));
