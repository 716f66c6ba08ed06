//! `#[schedrig::sched_test]`: a function that returns a
//! `schedrig::harness::SchedTest` (or a `Vec` of them), registered with
//! the harness so `schedrig::harness::main_registered()` finds it without
//! a hand-kept list. Registration goes through the `inventory` crate;
//! the macro only checks the function's shape and adds one `submit!`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ItemFn, ReturnType};

/// Registers `fn NAME() -> SchedTest` (or `-> Vec<SchedTest>`, e.g. a
/// gauntlet) with schedrig's test harness.
#[proc_macro_attribute]
pub fn sched_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new_spanned(
            attr,
            "#[sched_test] takes no arguments: say everything with the SchedTest builder",
        )
        .to_compile_error()
        .into();
    }
    let f = parse_macro_input!(item as ItemFn);
    let sig = &f.sig;
    let problem = if !sig.inputs.is_empty() {
        Some("a #[sched_test] function takes no arguments")
    } else if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        Some("a #[sched_test] function is neither async nor generic")
    } else if matches!(sig.output, ReturnType::Default) {
        Some("a #[sched_test] function returns a SchedTest or a Vec<SchedTest>")
    } else {
        None
    };
    if let Some(p) = problem {
        return syn::Error::new_spanned(sig, p).to_compile_error().into();
    }
    let name = &sig.ident;
    quote! {
        #f
        ::schedrig::inventory::submit! {
            ::schedrig::harness::Registered::new(|| ::schedrig::harness::IntoTests::into_tests(#name()))
        }
    }
    .into()
}
