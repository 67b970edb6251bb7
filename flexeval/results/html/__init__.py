"""The browsable HTML report (`flexeval report DIR --html`): see site.py."""

from .site import write_html_report

__all__ = ["write_html_report"]
