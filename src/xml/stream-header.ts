import { NS } from './namespaces.js';
import { renderAttrs } from './escape.js';

/** Attributes of an RFC 6120 §4.7 stream header, as the proxy writes them. */
export interface StreamHeaderAttrs {
  readonly to?: string | undefined;
  readonly from?: string | undefined;
  readonly id?: string | undefined;
  readonly version?: string | undefined;
  readonly lang?: string | undefined;
}

/**
 * An opening stream header in the `jabber:client` namespace, preceded by an XML declaration
 * (RFC 6120 §11.5 allows one at the start of each stream).
 */
export function renderStreamHeader(attrs: StreamHeaderAttrs): string {
  return (
    "<?xml version='1.0'?>" +
    `<stream:stream xmlns='${NS.client}' xmlns:stream='${NS.stream}'` +
    renderAttrs({
      to: attrs.to,
      from: attrs.from,
      id: attrs.id,
      version: attrs.version,
      'xml:lang': attrs.lang,
    }) +
    '>'
  );
}

export const STREAM_CLOSE = '</stream:stream>';
