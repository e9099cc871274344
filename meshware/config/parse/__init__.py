"""Parse at the edge: YAML/JSON documents in Istio's formats → validated, frozen resources."""

from meshware.config.parse.document import Document, load_files, load_yaml
from meshware.config.parse.resource import KINDS, parse_document, parse_documents

__all__ = ["KINDS", "Document", "load_files", "load_yaml", "parse_document", "parse_documents"]
