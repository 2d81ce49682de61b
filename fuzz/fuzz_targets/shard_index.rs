#![no_main]
// Entry point and what it covers: sightline_fuzzing::model::shard_index.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::model::shard_index(data));
