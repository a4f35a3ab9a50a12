//! A component that speaks a contract this gateway does not: `pgward:plugin@0.6.0`. Built with
//! wit-bindgen directly (the SDK only speaks the current contract); the gateway must refuse to
//! load it with an error naming both versions.
// wit-bindgen's generated glue is unsafe code; this crate has nothing else.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package pgward:plugin@0.6.0;
            interface host {
                log: func(message: string);
            }
            world plugin {
                import host;
                export info: func() -> string;
                export init: func(config: string) -> result<_, string>;
            }
        ",
    });

    struct Future;

    impl Guest for Future {
        fn info() -> String {
            "future-contract".into()
        }
        fn init(config: String) -> Result<(), String> {
            pgward::plugin::host::log(&config);
            Ok(())
        }
    }

    export!(Future);
}
