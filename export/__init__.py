"""See DESIGN.md: layout."""
