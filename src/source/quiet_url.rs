//! A clap value parser for URLs that may hold a secret (`https://user:token@host`): its
//! errors are built by hand (`clap::Error::raw`) because clap's own would quote the value.
//! Shared by the options of every source that takes a URL.

/// Parses one value of `flag` with `parse`, whose error never quotes a secret.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuietUrlParser {
    pub(crate) flag: &'static str,
    pub(crate) parse: fn(&str) -> Result<String, String>,
}

impl clap::builder::TypedValueParser for QuietUrlParser {
    type Value = String;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                format!("{} is not valid UTF-8\n", self.flag),
            )
        })?;
        (self.parse)(text).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })
    }
}
