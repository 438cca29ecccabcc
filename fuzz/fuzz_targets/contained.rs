//! Lets panics of arrow's parsers reach `tributary_connectors::format::contained`, which makes
//! them bad records; every other panic stays a crash.

/// Installs, once, a panic hook that stays quiet for a panic raised in an arrow crate (the
/// decoders catch those) and hands every other panic to libFuzzer's hook, which aborts.
pub fn tolerate_arrow_parser_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let crash = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_arrow = info
                .location()
                .is_some_and(|at| at.file().contains("/arrow-"));
            if !in_arrow {
                crash(info);
            }
        }));
    });
}
