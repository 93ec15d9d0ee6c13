//! The supervisor (being written).
use crate::{Config, Error, Hooks, Logger};
pub(crate) fn run(_a: &str, _c: &Config, _h: &mut Hooks, _l: &dyn Logger) -> Result<(), Error> {
    Err(Error::new(crate::ErrorKind::InvalidState, "not yet"))
}
