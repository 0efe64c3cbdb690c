//! How the privacy module reaches the text fields of a log entry without owning its type: the
//! [`TextField`] trait, implemented for the representations an entry may use (`Option<String>`,
//! `String`, `Cow<str>`, `Option<Cow<str>>`), and [`LogFields`], one borrow of each field.

use std::borrow::Cow;

/// A text field that may be absent and can be replaced.
pub trait TextField {
    fn text(&self) -> Option<&str>;
    /// Replaces the text (only ever called on a field that has one).
    fn replace(&mut self, text: String);
}

impl TextField for Option<String> {
    fn text(&self) -> Option<&str> {
        self.as_deref()
    }
    fn replace(&mut self, text: String) {
        *self = Some(text);
    }
}

impl TextField for String {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
    fn replace(&mut self, text: String) {
        *self = text;
    }
}

impl TextField for Cow<'_, str> {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
    fn replace(&mut self, text: String) {
        *self = Cow::Owned(text);
    }
}

impl TextField for Option<Cow<'_, str>> {
    fn text(&self) -> Option<&str> {
        self.as_deref()
    }
    fn replace(&mut self, text: String) {
        *self = Some(Cow::Owned(text));
    }
}

/// The text fields of one log entry, borrowed from whatever type the log pipeline uses, named as in
/// PostgreSQL's jsonlog. The borrows are of disjoint fields, so building one from an entry is a
/// struct literal (see the module doc of [`super`]).
pub struct LogFields<'a> {
    /// `state_code` (SQLSTATE), when the format carries it.
    pub sqlstate: Option<&'a str>,
    pub message: &'a mut dyn TextField,
    pub detail: &'a mut dyn TextField,
    pub hint: &'a mut dyn TextField,
    pub context: &'a mut dyn TextField,
    /// `statement`: the client statement the entry is about.
    pub statement: &'a mut dyn TextField,
    /// `internal_query`: the query of a PL/pgSQL or SPI failure.
    pub query: &'a mut dyn TextField,
}

impl<'a> LogFields<'a> {
    /// Every text field, for scans that apply to all of them.
    pub(super) fn texts(&mut self) -> [&mut dyn TextField; 6] {
        [
            &mut *self.message,
            &mut *self.detail,
            &mut *self.hint,
            &mut *self.context,
            &mut *self.statement,
            &mut *self.query,
        ]
    }
}
