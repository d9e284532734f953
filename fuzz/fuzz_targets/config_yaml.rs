//! The YAML loader (`config::parse`): any text is a config or an error,
//! never a panic; an accepted config renders and parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = ringlb::config::parse(text, "fuzz.yaml") {
        let rendered = cfg.render();
        // What `ringlb check` prints is itself a valid config.
        if let Err(e) = ringlb::config::parse(&rendered, "rendered.yaml") {
            panic!("rendered config does not parse: {e}\n{rendered}");
        }
    }
});
