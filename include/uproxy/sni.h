/* sni: the server name of a TLS ClientHello, read without terminating TLS (nginx's ssl_preread,
 * HAProxy's req.ssl_sni), and the choice of a listener's pool from it. Pure functions over byte
 * buffers: never reads a socket, never allocates, keeps no state between calls. */
#ifndef UPROXY_SNI_H
#define UPROXY_SNI_H

#include <stddef.h>
#include <stdint.h>

#include "uproxy/config.h"

/* The largest ClientHello handshake message accepted, its 4-byte header included. Real ones are
 * 200-2000 bytes (a post-quantum key share adds ~1.2 KiB); 16 KiB is one full TLS record. */
#define SNI_MAX_HELLO 16384

/* The TLS record header: content type, version, 16-bit length. */
#define SNI_RECORD_HDR 5

/* Record headers a hello may be spread over within the input bound below: a hello of the maximum
 * size in the fewest records needs 2; 64 leave room for clients that fragment on purpose (a
 * small hello may use far more records: the bound is on bytes, not on records). */
#define SNI_MAX_RECORDS 64

/* The most input bytes sni_parse can need before it decides: size a staging buffer with it. A
 * hello whose last byte would lie past this offset is SNI_TOO_BIG. */
#define SNI_MAX_INPUT (SNI_MAX_HELLO + SNI_MAX_RECORDS * SNI_RECORD_HDR)

/* A host name's longest length (RFC 6066 allows 2^16 - 1 bytes; DNS names fit in 255), and the
 * size of the buffer sni_parse copies it into (with its NUL). */
#define SNI_NAME_LEN 255
#define SNI_NAME_MAX (SNI_NAME_LEN + 1)

enum sni_result {
	SNI_NEED_MORE, /* every byte so far can start a ClientHello: read more */
	SNI_FOUND,     /* a complete, valid ClientHello with a host_name: copied */
	SNI_NO_SNI,    /* a complete, valid ClientHello without a host_name */
	SNI_NOT_TLS,   /* the first bytes are not a TLS handshake record (plain text, SSLv2, ...) */
	SNI_TOO_BIG, /* the ClientHello exceeds SNI_MAX_HELLO, or needs over SNI_MAX_INPUT bytes */
	SNI_MALFORMED, /* a TLS handshake record, but not a valid ClientHello */
};

/*
 * Reads the server name from the start of a connection's byte stream, buf[0..len), which the
 * caller accumulates across reads and passes again, whole, after each one. The ClientHello may
 * be fragmented over several handshake records (record versions SSLv3 to TLS 1.3) and the input
 * cut anywhere. name must hold namelen >= SNI_NAME_MAX bytes (else SNI_MALFORMED: a caller's
 * bug); on SNI_FOUND it gets the host name, lower-cased and NUL-terminated, else "".
 *
 * A verdict other than SNI_NEED_MORE is final: every longer buffer with the same prefix gives
 * the same one (and the same name). SNI_NOT_TLS is decided from the first 1-3 bytes (type 22,
 * version 3.0-3.4). SNI_FOUND and SNI_NO_SNI wait for the whole ClientHello, which is checked
 * strictly: every length in bounds, extensions exactly filling it, at most one server_name
 * extension with at most one host_name of 1-255 bytes made of letters, digits, '-', '_' in
 * dot-separated labels of 1-63 (no empty label, no trailing dot). SNI_NEED_MORE is never
 * returned once len >= SNI_MAX_INPUT. Bytes after the ClientHello are never read.
 */
enum sni_result sni_parse(const uint8_t *buf, size_t len, char *name, size_t namelen);

/* "need-more", "found", "no-sni", "not-tls", "too-big", "malformed" (for logs and metrics). */
const char *sni_result_name(enum sni_result r);

/*
 * The route for a server name: an exact pattern equal to name wins; else, among the wildcards
 * "*.SUFFIX" where name is one or more labels followed by ".SUFFIX", the longest SUFFIX (the
 * first of equal ones). Case-insensitive. Returns the index into routes, or -1 (the listener's
 * default pool, if it has one). "*.example.com" matches "a.b.example.com", not "example.com".
 */
int sni_route_match(const struct config_sni_route *routes, uint32_t n, const char *name);

/* Validates an sni-route pattern: an exact host name or "*." and a host name, by the name rules
 * of sni_parse (either case: the caller lower-cases). Returns 0, or -EINVAL with a static why. */
int sni_pattern_check(const char *pattern, const char **why);

#endif
