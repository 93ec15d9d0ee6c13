//! Child bootstrap (being written).
use std::sync::Arc;
use crate::{Config, Error, Handler, Hooks, Logger};
pub(crate) fn run(_c: &Config, _h: &mut Hooks, _hd: &Arc<dyn Handler>, _l: &dyn Logger) -> Result<(), Error> {
    Err(Error::new(crate::ErrorKind::InvalidState, "not yet"))
}
