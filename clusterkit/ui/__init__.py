"""What shows results: renderers, the one progress view, the Textual TUI. Only commands and this
package import rich or Textual."""
