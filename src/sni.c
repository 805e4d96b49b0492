/* sni: finds the server_name of a TLS ClientHello (RFC 8446 4.1.2, RFC 5246 7.4.1.2, RFC 6066 3)
 * in the bytes a client sent first, and matches it against a listener's sni-route patterns.
 * Two passes over buf: the first walks the records and reassembles nothing, only counting the
 * handshake bytes until the ClientHello is whole (deciding NOT_TLS, TOO_BIG and record errors as
 * early as the bytes allow); the second reads the ClientHello through a cursor that steps over
 * the record headers the first pass validated. No copy, no allocation, no state between calls. */
#include "uproxy/sni.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#define TLS_CT_HANDSHAKE    22	  /* ContentType handshake */
#define TLS_HS_CLIENT_HELLO 1	  /* HandshakeType client_hello */
#define TLS_HS_HDR	    4	  /* msg_type, 24-bit length */
#define TLS_MAJOR	    3	  /* SSLv3 and every TLS version */
#define TLS_MINOR_MAX	    4	  /* 3.4 = "TLS 1.3" (record versions are frozen at 3.1-3.3) */
#define TLS_MAX_FRAGMENT    16384 /* RFC 8446 5.1: a plaintext record carries at most 2^14 */
#define TLS_RANDOM	    32
#define TLS_SESSION_ID_MAX  32
#define TLS_EXT_SERVER_NAME 0
#define SNI_NAME_HOST	    0  /* NameType host_name */
#define DNS_LABEL_MAX	    63 /* RFC 1035 2.3.4 */
/* The shortest ClientHello body: version, random, empty session id, one cipher suite, one
 * compression method, no extensions (SSLv3 and TLS 1.0 may omit them). */
#define HELLO_BODY_MIN (2 + TLS_RANDOM + 1 + 2 + 2 + 1 + 1)

/* Reads a big-endian 16-bit value. */
static uint32_t be16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

/* ---- names ---- */

/* Whether c may appear in a host name: letters, digits, '-', '_' (seen in real names) and the
 * label separator. */
static bool host_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.';
}

/* Checks a host name of n bytes: 1-255 bytes of host_char, dot-separated labels of 1-63 (so no
 * leading, trailing or double dot). Returns NULL, or why not. */
static const char *name_why(const char *s, size_t n)
{
	size_t label = 0;

	if (n == 0)
		return "empty name";
	if (n > SNI_NAME_LEN)
		return "name longer than 255 bytes";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!host_char(c))
			return "a byte that is not a letter, digit, '-', '_' or '.'";
		if (c != '.') {
			if (++label > DNS_LABEL_MAX)
				return "a label longer than 63 bytes";
			continue;
		}
		if (label == 0)
			return "an empty label (leading or double dot)";
		label = 0;
	}
	if (label == 0)
		return "a trailing dot";
	return NULL;
}

/* ---- the ClientHello, read through its records ---- */

/* A cursor over the ClientHello's bytes in buf: pos is the next byte, rec_left the bytes left in
 * its record (the next record's header, at pos, was validated by the first pass), left the bytes
 * left in the ClientHello. Every read checks left first, so a length field can never take the
 * cursor past the ClientHello, and the first pass proved the ClientHello is all in buf. */
struct rd {
	const uint8_t *buf;
	size_t pos;
	size_t rec_left;
	size_t left;
};

/* The next byte; the caller has checked r->left. */
static uint8_t rd_byte(struct rd *r)
{
	if (r->rec_left == 0) {
		r->rec_left = be16(r->buf + r->pos + 3);
		r->pos += SNI_RECORD_HDR;
	}
	r->rec_left--;
	r->left--;
	return r->buf[r->pos++];
}

/* Reads an n-byte (1-3) big-endian value into *v; false past the end of the ClientHello. */
static bool rd_uint(struct rd *r, size_t n, uint32_t *v)
{
	if (r->left < n)
		return false;
	*v = 0;
	while (n-- > 0)
		*v = *v << 8 | rd_byte(r);
	return true;
}

/* Skips n bytes, a record's rest at a time; false past the end of the ClientHello. */
static bool rd_skip(struct rd *r, size_t n)
{
	if (r->left < n)
		return false;
	while (n > 0) {
		size_t step;

		if (r->rec_left == 0) {
			r->rec_left = be16(r->buf + r->pos + 3);
			r->pos += SNI_RECORD_HDR;
		}
		step = n < r->rec_left ? n : r->rec_left;
		r->pos += step;
		r->rec_left -= step;
		r->left -= step;
		n -= step;
	}
	return true;
}

/* Reads a ServerNameList of len bytes (RFC 6066 3): entries of a type byte and a 16-bit-length
 * name. At most one host_name, copied lower-cased into host (SNI_NAME_MAX bytes) and checked;
 * other name types are skipped. Returns SNI_FOUND, SNI_NO_SNI or SNI_MALFORMED. */
static enum sni_result read_server_names(struct rd *r, uint32_t len, char *host)
{
	uint32_t list, type, n;
	bool found = false;

	if (len < 2 || !rd_uint(r, 2, &list) || list != len - 2 || list == 0)
		return SNI_MALFORMED;
	while (list > 0) {
		if (list < 3 || !rd_uint(r, 1, &type) || !rd_uint(r, 2, &n) || n > list - 3)
			return SNI_MALFORMED;
		list -= 3 + n;
		if (type != SNI_NAME_HOST) {
			if (!rd_skip(r, n))
				return SNI_MALFORMED;
			continue;
		}
		if (found || n == 0 || n > SNI_NAME_LEN)
			return SNI_MALFORMED; /* RFC 6066: one name per type; HostName<1..2^16-1> */
		for (uint32_t i = 0; i < n; i++) {
			char c = (char)rd_byte(r);

			host[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
		}
		host[n] = '\0';
		if (name_why(host, n) != NULL)
			return SNI_MALFORMED;
		found = true;
	}
	return found ? SNI_FOUND : SNI_NO_SNI;
}

/* Reads the whole ClientHello body (the cursor is just past its 4-byte header) and its
 * extensions, strictly. Returns SNI_FOUND (host filled in), SNI_NO_SNI or SNI_MALFORMED. */
static enum sni_result read_hello(struct rd *r, char *host)
{
	enum sni_result res = SNI_NO_SNI;
	uint32_t v, ext_len, type, n;
	bool seen_sni = false;

	if (!rd_uint(r, 2, &v) || v >> 8 != TLS_MAJOR) /* legacy_version */
		return SNI_MALFORMED;
	if (!rd_skip(r, TLS_RANDOM))
		return SNI_MALFORMED;
	if (!rd_uint(r, 1, &n) || n > TLS_SESSION_ID_MAX || !rd_skip(r, n))
		return SNI_MALFORMED;
	if (!rd_uint(r, 2, &n) || n < 2 || n % 2 != 0 || !rd_skip(r, n)) /* cipher_suites */
		return SNI_MALFORMED;
	if (!rd_uint(r, 1, &n) || n < 1 || !rd_skip(r, n)) /* compression_methods */
		return SNI_MALFORMED;
	if (r->left == 0)
		return SNI_NO_SNI; /* no extensions at all */
	if (!rd_uint(r, 2, &ext_len) || ext_len != r->left)
		return SNI_MALFORMED; /* the extensions must fill the rest exactly */
	while (r->left > 0) {
		if (!rd_uint(r, 2, &type) || !rd_uint(r, 2, &n) || n > r->left)
			return SNI_MALFORMED;
		if (type != TLS_EXT_SERVER_NAME) {
			rd_skip(r, n);
			continue;
		}
		if (seen_sni)
			return SNI_MALFORMED; /* RFC 8446 4.2: no extension type twice */
		seen_sni = true;
		res = read_server_names(r, n, host);
		if (res == SNI_MALFORMED)
			return res;
	}
	return res;
}

/* ---- the records ---- */

/* Where the record walk stands: the first record's header fields decide NOT_TLS, a later
 * one's MALFORMED. */
static enum sni_result bad_record(size_t off)
{
	return off == 0 ? SNI_NOT_TLS : SNI_MALFORMED;
}

/*
 * Walks the handshake records from the start of buf until the ClientHello is whole. Returns
 * SNI_FOUND when it is (*total gets its length, 4-byte header included), or the verdict the
 * bytes so far force (SNI_NEED_MORE when they force none).
 */
static enum sni_result walk_records(const uint8_t *buf, size_t len, size_t *total_out)
{
	uint8_t hdr[TLS_HS_HDR];
	size_t off = 0, got = 0, total = 0;

	for (;;) {
		size_t data, rec_len, rest, take;
		/* the ClientHello bytes still to come: at least the rest of its header */
		size_t want = total ? total - got : TLS_HS_HDR - got;

		if (off + SNI_RECORD_HDR + want > SNI_MAX_INPUT)
			return SNI_TOO_BIG;
		if (len <= off)
			return SNI_NEED_MORE;
		if (buf[off] != TLS_CT_HANDSHAKE)
			return bad_record(off);
		if (len <= off + 1)
			return SNI_NEED_MORE;
		if (buf[off + 1] != TLS_MAJOR)
			return bad_record(off);
		if (len <= off + 2)
			return SNI_NEED_MORE;
		if (buf[off + 2] > TLS_MINOR_MAX)
			return bad_record(off);
		if (len < off + SNI_RECORD_HDR)
			return SNI_NEED_MORE;
		rec_len = be16(buf + off + 3);
		if (rec_len == 0 || rec_len > TLS_MAX_FRAGMENT)
			return SNI_MALFORMED; /* RFC 8446 5.1: no empty handshake fragment */
		data = off + SNI_RECORD_HDR;
		rest = rec_len;

		/* the handshake header, possibly split over records */
		while (got < TLS_HS_HDR && rest > 0) {
			if (len <= data)
				return SNI_NEED_MORE;
			hdr[got++] = buf[data++];
			rest--;
			if (got == 1 && hdr[0] != TLS_HS_CLIENT_HELLO)
				return SNI_MALFORMED;
			if (got < TLS_HS_HDR)
				continue;
			total = TLS_HS_HDR + ((size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3]);
			if (total > SNI_MAX_HELLO)
				return SNI_TOO_BIG;
			if (total < TLS_HS_HDR + HELLO_BODY_MIN)
				return SNI_MALFORMED;
			/* its end: in this record, or past at least one more record header */
			want = total - got;
			if (data + want + (want > rest ? SNI_RECORD_HDR : 0) > SNI_MAX_INPUT)
				return SNI_TOO_BIG;
		}
		if (got < TLS_HS_HDR) {
			off = data;
			continue;
		}
		take = total - got < rest ? total - got : rest;
		if (len < data + take)
			return SNI_NEED_MORE;
		got += take;
		if (got == total) {
			*total_out = total;
			return SNI_FOUND;
		}
		off = data + take;
	}
}

enum sni_result sni_parse(const uint8_t *buf, size_t len, char *name, size_t namelen)
{
	char host[SNI_NAME_MAX];
	size_t total = 0;
	enum sni_result res;
	struct rd r;

	if (name == NULL || namelen < SNI_NAME_MAX)
		return SNI_MALFORMED;
	name[0] = '\0';
	res = walk_records(buf, len, &total);
	if (res != SNI_FOUND)
		return res;
	r = (struct rd){
		.buf = buf,
		.pos = SNI_RECORD_HDR,
		.rec_left = be16(buf + 3),
		.left = total,
	};
	rd_skip(&r, TLS_HS_HDR);
	res = read_hello(&r, host);
	if (res == SNI_FOUND)
		memcpy(name, host, strlen(host) + 1);
	return res;
}

const char *sni_result_name(enum sni_result r)
{
	switch (r) {
	case SNI_NEED_MORE:
		return "need-more";
	case SNI_FOUND:
		return "found";
	case SNI_NO_SNI:
		return "no-sni";
	case SNI_NOT_TLS:
		return "not-tls";
	case SNI_TOO_BIG:
		return "too-big";
	case SNI_MALFORMED:
		return "malformed";
	}
	return "unknown";
}

/* ---- routes ---- */

/* Whether pattern is a wildcard, "*." then a name. */
static bool is_wildcard(const char *pattern)
{
	return pattern[0] == '*' && pattern[1] == '.';
}

int sni_route_match(const struct config_sni_route *routes, uint32_t n, const char *name)
{
	size_t nl = strlen(name), best_len = 0;
	int best = -1;

	if (nl == 0)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		if (!is_wildcard(routes[i].pattern) && strcasecmp(routes[i].pattern, name) == 0)
			return (int)i;
	}
	for (uint32_t i = 0; i < n; i++) {
		const char *suffix = routes[i].pattern + 1; /* ".example.com" */
		size_t sl;

		if (!is_wildcard(routes[i].pattern))
			continue;
		sl = strlen(suffix);
		/* at least one non-empty label before the suffix */
		if (nl <= sl || name[nl - sl - 1] == '.' || sl <= best_len)
			continue;
		if (strcasecmp(name + nl - sl, suffix) == 0) {
			best = (int)i;
			best_len = sl;
		}
	}
	return best;
}

int sni_pattern_check(const char *pattern, const char **why)
{
	const char *host = is_wildcard(pattern) ? pattern + 2 : pattern;
	const char *w;

	if (strlen(pattern) >= CONFIG_SNI_PATTERN_MAX) {
		*why = "pattern longer than 255 bytes";
		return -EINVAL;
	}
	if (strchr(host, '*') != NULL) {
		*why = "'*' only as a whole first label: \"*.example.com\"";
		return -EINVAL;
	}
	w = name_why(host, strlen(host));
	if (w != NULL) {
		*why = w;
		return -EINVAL;
	}
	return 0;
}
