/* Unit tests for sni: real ClientHellos captured from openssl s_client and curl, and hand-built
 * ones for every edge: each prefix, every split into records, the first byte that decides
 * NOT_TLS, each malformed length, the 16 KiB bound, bad names; then route matching and pattern
 * checks. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "uproxy/sni.h"
#include "../sni_hellos.h"

/* Bytes the tests append after a ClientHello: what a client may send next. */
static const uint8_t trailer[] = "\x14\x03\x03\x00\x01\x01GET / HTTP/1.1\r\n";

/* Room for any input the parser can need, and more. */
#define BUF_MAX (2 * SNI_MAX_INPUT)

static const char *rname(enum sni_result r)
{
	return sni_result_name(r);
}

/* One parse of buf[0..n) into a fresh name buffer; *name (if given) gets a copy of the name. */
static enum sni_result parse(const uint8_t *buf, size_t n, char *name_out)
{
	char name[SNI_NAME_MAX];
	enum sni_result r;

	memset(name, 'X', sizeof(name));
	r = sni_parse(buf, n, name, sizeof(name));
	if (r != SNI_FOUND)
		cr_assert_eq(name[0], '\0', "%s left a name behind", rname(r));
	if (name_out)
		memcpy(name_out, name, sizeof(name));
	return r;
}

/*
 * Checks that buf[0..n) is one complete input: every shorter prefix needs more, the whole and
 * the whole followed by more bytes give want (with name, for SNI_FOUND), also when parsed from a
 * buffer of exactly n bytes (ASan sees a read past it).
 */
static void complete(const uint8_t *buf, size_t n, enum sni_result want, const char *name)
{
	static uint8_t big[BUF_MAX + sizeof(trailer)];
	char got[SNI_NAME_MAX];
	uint8_t *exact = malloc(n);
	enum sni_result r;

	cr_assert_not_null(exact);
	memcpy(exact, buf, n);
	for (size_t k = 0; k < n; k++) {
		r = parse(exact, k, NULL);
		cr_assert_eq(r, SNI_NEED_MORE, "prefix %zu of %zu: %s", k, n, rname(r));
	}
	r = parse(exact, n, got);
	cr_assert_eq(r, want, "whole %zu bytes: %s, want %s", n, rname(r), rname(want));
	if (want == SNI_FOUND)
		cr_assert_str_eq(got, name);
	free(exact);
	memcpy(big, buf, n);
	memcpy(big + n, trailer, sizeof(trailer));
	r = parse(big, n + sizeof(trailer), got);
	cr_assert_eq(r, want, "with data after it: %s, want %s", rname(r), rname(want));
	if (want == SNI_FOUND)
		cr_assert_str_eq(got, name);
}

/* Checks that buf[0..n) gives want first at prefix length at, and every longer prefix too. */
static void decided_at(const uint8_t *buf, size_t n, enum sni_result want, size_t at)
{
	for (size_t k = 0; k <= n; k++) {
		enum sni_result r = parse(buf, k, NULL);

		if (k < at)
			cr_assert_eq(r, SNI_NEED_MORE, "prefix %zu (want %s at %zu): %s", k,
				     rname(want), at, rname(r));
		else
			cr_assert_eq(r, want, "prefix %zu: %s, want %s (from %zu)", k, rname(r),
				     rname(want), at);
	}
}

/* ---- building ClientHellos ---- */

/* Appends big-endian values and bytes to a buffer. */
struct out {
	uint8_t *b;
	size_t n;
};

static void put8(struct out *o, uint32_t v)
{
	o->b[o->n++] = (uint8_t)v;
}

static void put16(struct out *o, uint32_t v)
{
	put8(o, v >> 8);
	put8(o, v);
}

static void put24(struct out *o, uint32_t v)
{
	put8(o, v >> 16);
	put16(o, v);
}

static void putn(struct out *o, const void *p, size_t n)
{
	memcpy(o->b + o->n, p, n);
	o->n += n;
}

/* A server_name extension holding one host_name of n bytes. */
static size_t ext_sni(uint8_t *e, const char *name, size_t n)
{
	struct out o = { e, 0 };

	put16(&o, 0);	  /* server_name */
	put16(&o, n + 5); /* extension length */
	put16(&o, n + 3); /* ServerNameList length */
	put8(&o, 0);	  /* host_name */
	put16(&o, n);
	putn(&o, name, n);
	return o.n;
}

/* An extension of type with len zero bytes of data (21 is padding, RFC 7685). */
static size_t ext_other(uint8_t *e, uint32_t type, size_t len)
{
	struct out o = { e, 0 };

	put16(&o, type);
	put16(&o, len);
	memset(o.b + o.n, 0, len);
	o.n += len;
	return o.n;
}

/* A ClientHello handshake message with the extensions block exts (none at all when exts is
 * NULL), as a TLS 1.2/1.3 client builds it. Returns its length. */
static size_t make_msg(uint8_t *m, const uint8_t *exts, size_t elen)
{
	static const uint8_t suites[] = { 0x13, 0x01, 0xc0, 0x2f };
	struct out o = { m, 0 };
	uint8_t random[32];

	memset(random, 0x5a, sizeof(random));
	put8(&o, 1); /* client_hello */
	put24(&o, 0);
	put16(&o, 0x0303);
	putn(&o, random, sizeof(random));
	put8(&o, 32);
	putn(&o, random, 32);
	put16(&o, sizeof(suites));
	putn(&o, suites, sizeof(suites));
	put8(&o, 1);
	put8(&o, 0);
	if (exts != NULL) {
		put16(&o, elen);
		putn(&o, exts, elen);
	}
	m[1] = (uint8_t)((o.n - 4) >> 16);
	m[2] = (uint8_t)((o.n - 4) >> 8);
	m[3] = (uint8_t)(o.n - 4);
	return o.n;
}

/* A ClientHello naming name, after a supported_versions-like extension and before padding. */
static size_t make_msg_name(uint8_t *m, const char *name, size_t n)
{
	static uint8_t e[SNI_MAX_HELLO];
	size_t el = 0;

	el += ext_other(e + el, 43, 3);
	el += ext_sni(e + el, name, n);
	el += ext_other(e + el, 21, 7);
	return make_msg(m, e, el);
}

/*
 * Wraps msg[0..mlen) in handshake records of record version 3.minor: fragment i has cuts[i]
 * bytes, the last fragment the rest. Returns the bytes written.
 */
static size_t wrap(uint8_t *out, const uint8_t *msg, size_t mlen, const size_t *cuts,
		   size_t ncuts, uint8_t minor)
{
	struct out o = { out, 0 };
	size_t off = 0;

	for (size_t i = 0; i <= ncuts; i++) {
		size_t n = i < ncuts ? cuts[i] : mlen - off;

		cr_assert_leq(off + n, mlen, "bad cuts");
		put8(&o, 22);
		put8(&o, 3);
		put8(&o, minor);
		put16(&o, n);
		putn(&o, msg + off, n);
		off += n;
	}
	return o.n;
}

/* msg in one TLS 1.0 record, as clients send it. */
static size_t wrap1(uint8_t *out, const uint8_t *msg, size_t mlen)
{
	return wrap(out, msg, mlen, NULL, 0, 1);
}

/* The handshake message inside a captured single-record hello. */
static const uint8_t *msg_of(const uint8_t *rec, size_t n, size_t *mlen)
{
	cr_assert_eq(rec[0], 22);
	cr_assert_eq(((size_t)rec[3] << 8 | rec[4]) + 5, n, "not one record");
	*mlen = n - 5;
	return rec + 5;
}

/* ---- real ClientHellos ---- */

Test(sni, openssl_tls13_hello_lower_cases_the_name)
{
	complete(hello_openssl_a_test, sizeof(hello_openssl_a_test), SNI_FOUND, "a.test");
}

Test(sni, openssl_tls12_hello)
{
	complete(hello_openssl_tls12_www, sizeof(hello_openssl_tls12_www), SNI_FOUND,
		 "www.example.com");
}

Test(sni, curl_hello)
{
	complete(hello_curl_x_b_test, sizeof(hello_curl_x_b_test), SNI_FOUND, "x.b.test");
}

Test(sni, openssl_hello_without_server_name)
{
	complete(hello_openssl_nosni, sizeof(hello_openssl_nosni), SNI_NO_SNI, NULL);
}

/* A socket's reads: the bytes arrive in chunks of every size from 1 to 64 and the parser runs
 * on the growing buffer after each; the verdict comes exactly with the last byte. */
Test(sni, real_hello_read_in_chunks_of_every_size)
{
	static uint8_t stage[sizeof(hello_curl_x_b_test)];
	const size_t n = sizeof(hello_curl_x_b_test);
	char name[SNI_NAME_MAX];

	for (size_t chunk = 1; chunk <= 64; chunk++) {
		size_t have = 0;
		enum sni_result r = SNI_NEED_MORE;

		while (have < n) {
			size_t step = n - have < chunk ? n - have : chunk;

			cr_assert_eq(r, SNI_NEED_MORE, "chunk %zu: %s at %zu", chunk, rname(r), have);
			memcpy(stage + have, hello_curl_x_b_test + have, step);
			have += step;
			r = parse(stage, have, name);
		}
		cr_assert_eq(r, SNI_FOUND, "chunk %zu: %s", chunk, rname(r));
		cr_assert_str_eq(name, "x.b.test");
	}
}

/* The captured hello re-cut into two records at every point of its handshake message
 * (including inside its 4-byte header), then into three at a spread of point pairs. */
Test(sni, real_hello_in_two_and_three_records_at_every_split)
{
	static uint8_t rec[BUF_MAX];
	size_t mlen, n;
	const uint8_t *msg = msg_of(hello_openssl_a_test, sizeof(hello_openssl_a_test), &mlen);

	for (size_t s = 1; s < mlen; s++) {
		size_t cuts[1] = { s };

		n = wrap(rec, msg, mlen, cuts, 1, 1);
		cr_assert_eq(n, sizeof(hello_openssl_a_test) + 5);
		complete(rec, n, SNI_FOUND, "a.test");
	}
	for (size_t a = 1; a < mlen - 1; a += 7) {
		for (size_t b = 1; a + b < mlen; b += 11) {
			size_t cuts[2] = { a, b };
			char name[SNI_NAME_MAX];

			n = wrap(rec, msg, mlen, cuts, 2, 3);
			cr_assert_eq(parse(rec, n, name), SNI_FOUND, "cuts %zu+%zu", a, b);
			cr_assert_str_eq(name, "a.test");
			cr_assert_eq(parse(rec, n - 1, NULL), SNI_NEED_MORE);
		}
	}
	/* the cuts right around the 4-byte header and the name, in three records */
	for (size_t a = 1; a <= 4; a++) {
		for (size_t b = 1; b <= 4; b++) {
			size_t cuts[2] = { a, b };

			n = wrap(rec, msg, mlen, cuts, 2, 1);
			complete(rec, n, SNI_FOUND, "a.test");
		}
	}
}

Test(sni, one_byte_records)
{
	static uint8_t rec[BUF_MAX];
	static size_t cuts[1024];
	size_t mlen, n;
	const uint8_t *msg = msg_of(hello_curl_x_b_test, sizeof(hello_curl_x_b_test), &mlen);

	for (size_t i = 0; i < mlen - 1; i++)
		cuts[i] = 1;
	n = wrap(rec, msg, mlen, cuts, mlen - 1, 1);
	cr_assert_eq(n, 6 * mlen); /* 3072 bytes: well within SNI_MAX_INPUT */
	complete(rec, n, SNI_FOUND, "x.b.test");
}

/* ---- record and handshake versions ---- */

Test(sni, every_record_version_from_ssl3_to_tls13)
{
	static uint8_t m[1024], rec[2048];
	size_t mlen = make_msg_name(m, "v.example", 9);
	size_t cuts[1] = { 40 };

	for (uint8_t minor = 0; minor <= 4; minor++) {
		size_t n = wrap(rec, m, mlen, cuts, 1, minor);

		complete(rec, n, SNI_FOUND, "v.example");
	}
	/* an SSLv3 hello: client_version 3.0, no extensions at all */
	mlen = make_msg(m, NULL, 0);
	m[5] = 0;
	complete(rec, wrap(rec, m, mlen, NULL, 0, 0), SNI_NO_SNI, NULL);
}

/* ---- no server name ---- */

Test(sni, no_server_name)
{
	static uint8_t m[1024], e[256], rec[2048];
	struct out o = { e, 0 };
	size_t el;

	/* no extensions block */
	complete(rec, wrap1(rec, m, make_msg(m, NULL, 0)), SNI_NO_SNI, NULL);
	/* an empty extensions block */
	complete(rec, wrap1(rec, m, make_msg(m, e, 0)), SNI_NO_SNI, NULL);
	/* other extensions only */
	el = ext_other(e, 43, 3);
	el += ext_other(e + el, 10, 8);
	complete(rec, wrap1(rec, m, make_msg(m, e, el)), SNI_NO_SNI, NULL);
	/* a server_name list with only a name type other than host_name */
	put16(&o, 0);
	put16(&o, 2 + 3 + 4);
	put16(&o, 3 + 4);
	put8(&o, 7);
	put16(&o, 4);
	putn(&o, "abcd", 4);
	complete(rec, wrap1(rec, m, make_msg(m, e, o.n)), SNI_NO_SNI, NULL);
}

/* A host_name after another name type is still found. */
Test(sni, host_name_after_another_name_type)
{
	static uint8_t m[1024], e[256], rec[2048];
	struct out o = { e, 0 };

	put16(&o, 0);
	put16(&o, 2 + 7 + 8);
	put16(&o, 7 + 8);
	put8(&o, 7);
	put16(&o, 4);
	putn(&o, "abcd", 4);
	put8(&o, 0);
	put16(&o, 5);
	putn(&o, "h.TLD", 5);
	complete(rec, wrap1(rec, m, make_msg(m, e, o.n)), SNI_FOUND, "h.tld");
}

/* ---- not TLS: decided from the first byte that shows it ---- */

Test(sni, plain_text_is_not_tls_at_the_first_byte)
{
	static const char *const texts[] = { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "SSH-2.0-x\r\n",
					     "\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" };

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		decided_at((const uint8_t *)texts[i], strlen(texts[i]), SNI_NOT_TLS, 1);
	decided_at((const uint8_t *)"\x00", 1, SNI_NOT_TLS, 1);
	decided_at((const uint8_t *)"\x17\x03\x03\x00\x10", 5, SNI_NOT_TLS, 1); /* app data */
	decided_at((const uint8_t *)"\x15\x03\x01\x00\x02\x02\x28", 7, SNI_NOT_TLS, 1); /* alert */
}

Test(sni, sslv2_hello_is_not_tls)
{
	/* an SSLv2-compatible CLIENT-HELLO (2-byte header with the top bit set, type 1, 3.1) */
	static const uint8_t v2[] = { 0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00,
				      0x00, 0x10, 0x00, 0x00, 0x04, 0x00, 0x00, 0x05 };

	decided_at(v2, sizeof(v2), SNI_NOT_TLS, 1);
}

Test(sni, handshake_type_with_unknown_version_is_not_tls)
{
	decided_at((const uint8_t *)"\x16\x02\x00\x00\x30", 5, SNI_NOT_TLS, 2);
	decided_at((const uint8_t *)"\x16\x04\x01\x00\x30", 5, SNI_NOT_TLS, 2);
	decided_at((const uint8_t *)"\x16\x03\x05\x00\x30", 5, SNI_NOT_TLS, 3);
	decided_at((const uint8_t *)"\x16\x03\xff\x00\x30", 5, SNI_NOT_TLS, 3);
}

/* ---- malformed ---- */

Test(sni, bad_records_are_malformed)
{
	static uint8_t m[1024], rec[2048];
	size_t mlen = make_msg_name(m, "a.test", 6), n;
	size_t cuts[1] = { 20 };

	/* an empty first record, and one longer than 2^14 */
	decided_at((const uint8_t *)"\x16\x03\x01\x00\x00\x01", 6, SNI_MALFORMED, 5);
	decided_at((const uint8_t *)"\x16\x03\x01\x40\x01\x01", 6, SNI_MALFORMED, 5);
	/* not a client_hello (a server_hello), decided at the handshake type byte */
	decided_at((const uint8_t *)"\x16\x03\x01\x00\x40\x02\x00\x00\x3c", 9, SNI_MALFORMED, 6);
	/* a ClientHello too short to hold its fixed fields */
	decided_at((const uint8_t *)"\x16\x03\x01\x00\x40\x01\x00\x00\x28", 9, SNI_MALFORMED, 9);

	/* the second record: another content type, a bad version, empty */
	n = wrap(rec, m, mlen, cuts, 1, 1);
	rec[25] = 23;
	decided_at(rec, n, SNI_MALFORMED, 26);
	rec[25] = 22;
	rec[26] = 2;
	decided_at(rec, n, SNI_MALFORMED, 27);
	rec[26] = 3;
	rec[27] = 9;
	decided_at(rec, n, SNI_MALFORMED, 28);
	rec[27] = 1;
	cr_assert_eq(parse(rec, n, NULL), SNI_FOUND);
	{
		size_t cuts0[2] = { 20, 0 };

		n = wrap(rec, m, mlen, cuts0, 2, 1);
		decided_at(rec, n, SNI_MALFORMED, 30);
	}
}

/* Builds the hello whose extensions block is e[0..el), with its declared length changed by
 * delta, and checks it is malformed once complete. */
static void ext_block_malformed(const uint8_t *e, size_t el, int delta)
{
	static uint8_t m[4096], rec[4200];
	size_t mlen = make_msg(m, e, el);
	size_t at = 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2; /* the extensions length */
	uint32_t v = (uint32_t)((int)el + delta);

	m[at] = (uint8_t)(v >> 8);
	m[at + 1] = (uint8_t)v;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
}

Test(sni, truncated_and_overlong_lengths_are_malformed)
{
	static uint8_t e[512], m[1024], rec[2048];
	size_t el = ext_sni(e, "a.test", 6), mlen;

	ext_block_malformed(e, el, +1); /* longer than the hello */
	ext_block_malformed(e, el, -1); /* leaves a byte over */
	ext_block_malformed(e, el, -(int)el); /* zero, with extensions after it */

	/* an extension whose length runs past the block */
	memcpy(m, e, el);
	m[3] = (uint8_t)(m[3] + 1);
	complete(rec, wrap1(rec, m + 600, make_msg(m + 600, m, el)), SNI_MALFORMED, NULL);
	/* the extension block ends inside an extension header */
	complete(rec, wrap1(rec, m + 600, make_msg(m + 600, e, 3)), SNI_MALFORMED, NULL);

	/* the ServerNameList length: one more, one less than the extension holds, zero */
	for (int d = -1; d <= 1; d += 2) {
		memcpy(m, e, el);
		m[5] = (uint8_t)(m[5] + d);
		complete(rec, wrap1(rec, m + 600, make_msg(m + 600, m, el)), SNI_MALFORMED, NULL);
	}
	{
		static const uint8_t empty_list[] = { 0, 0, 0, 2, 0, 0 };
		static const uint8_t empty_ext[] = { 0, 0, 0, 0 };

		complete(rec, wrap1(rec, m, make_msg(m, empty_list, 6)), SNI_MALFORMED, NULL);
		complete(rec, wrap1(rec, m, make_msg(m, empty_ext, 4)), SNI_MALFORMED, NULL);
	}
	/* the host name's length: past the list, or zero */
	memcpy(m, e, el);
	m[8] = (uint8_t)(m[8] + 1);
	complete(rec, wrap1(rec, m + 600, make_msg(m + 600, m, el)), SNI_MALFORMED, NULL);
	{
		static const uint8_t zero_name[] = { 0, 0, 0, 5, 0, 3, 0, 0, 0 };

		complete(rec, wrap1(rec, m, make_msg(m, zero_name, 9)), SNI_MALFORMED, NULL);
	}

	/* the fixed fields: session id over 32, odd or empty cipher suites, no compression */
	mlen = make_msg(m, e, el);
	m[38] = 33;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	mlen = make_msg(m, e, el);
	m[72] = 3;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	m[72] = 0;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	mlen = make_msg(m, e, el);
	m[77] = 0;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	/* client_version not 3.x */
	mlen = make_msg(m, e, el);
	m[4] = 2;
	complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	/* the handshake length (and the record) one byte shorter: the extensions overrun it */
	mlen = make_msg(m, e, el);
	m[3]--;
	complete(rec, wrap1(rec, m, mlen - 1), SNI_MALFORMED, NULL);
	/* one byte longer, a byte after the extensions */
	mlen = make_msg(m, e, el);
	m[3]++;
	m[mlen] = 0;
	complete(rec, wrap1(rec, m, mlen + 1), SNI_MALFORMED, NULL);
}

Test(sni, duplicates_are_malformed)
{
	static uint8_t e[512], m[1024], rec[2048];
	struct out o = { e, 0 };
	size_t el;

	/* two server_name extensions */
	el = ext_sni(e, "a.test", 6);
	el += ext_sni(e + el, "b.test", 6);
	complete(rec, wrap1(rec, m, make_msg(m, e, el)), SNI_MALFORMED, NULL);
	/* two host_names in one list */
	put16(&o, 0);
	put16(&o, 2 + 2 * 9);
	put16(&o, 2 * 9);
	for (int i = 0; i < 2; i++) {
		put8(&o, 0);
		put16(&o, 6);
		putn(&o, i ? "b.test" : "a.test", 6);
	}
	complete(rec, wrap1(rec, m, make_msg(m, e, o.n)), SNI_MALFORMED, NULL);
}

/* ---- names ---- */

Test(sni, bad_names_are_malformed)
{
	static const char *const bad[] = {
		"a b.test", "a*.test", "*.test",   "a/b",	"a:443",  "a.test.", ".a.test",
		"a..test",  "a\\b",    "caf\xc3\xa9", "a\x7f", "\x01", "a\tb",	  "a%2e",
	};
	static uint8_t m[1024], rec[2048];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t mlen = make_msg_name(m, bad[i], strlen(bad[i]));

		complete(rec, wrap1(rec, m, mlen), SNI_MALFORMED, NULL);
	}
	/* a NUL inside the name */
	complete(rec, wrap1(rec, m, make_msg_name(m, "a\0b.test", 8)), SNI_MALFORMED, NULL);
}

Test(sni, name_lengths)
{
	static uint8_t m[2048], rec[4096];
	char name[300], want[300];

	/* 255 bytes in labels of 63: the longest accepted; 256: refused */
	memset(name, 'A', sizeof(name));
	for (size_t i = 63; i < sizeof(name); i += 64)
		name[i] = '.';
	memcpy(want, name, 255);
	for (size_t i = 0; i < 255; i++)
		want[i] = want[i] == 'A' ? 'a' : want[i];
	want[255] = '\0';
	complete(rec, wrap1(rec, m, make_msg_name(m, name, 255)), SNI_FOUND, want);
	name[255] = 'x';
	complete(rec, wrap1(rec, m, make_msg_name(m, name, 256)), SNI_MALFORMED, NULL);
	/* a label of 64 */
	memset(name, 'b', 64);
	complete(rec, wrap1(rec, m, make_msg_name(m, name, 64)), SNI_MALFORMED, NULL);
	complete(rec, wrap1(rec, m, make_msg_name(m, name, 63)), SNI_FOUND,
		 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
	/* one byte; digits, '-' and '_' */
	complete(rec, wrap1(rec, m, make_msg_name(m, "Z", 1)), SNI_FOUND, "z");
	complete(rec, wrap1(rec, m, make_msg_name(m, "_x-1.EXAMPLE-2.com", 18)), SNI_FOUND,
		 "_x-1.example-2.com");
}

Test(sni, name_buffer_too_small_is_refused)
{
	char small[SNI_NAME_MAX - 1];

	cr_assert_eq(sni_parse(hello_openssl_a_test, sizeof(hello_openssl_a_test), small,
			       sizeof(small)),
		     SNI_MALFORMED);
	cr_assert_eq(sni_parse(hello_openssl_a_test, sizeof(hello_openssl_a_test), NULL,
			       SNI_NAME_MAX),
		     SNI_MALFORMED);
}

/* ---- size bounds ---- */

/* A ClientHello naming name, padded to a handshake message of exactly total bytes. */
static size_t make_msg_total(uint8_t *m, size_t total)
{
	static uint8_t e[SNI_MAX_HELLO + 64];
	size_t base, el;

	el = ext_sni(e, "big.test", 8);
	base = make_msg(m, e, el); /* without padding */
	cr_assert_geq(total, base + 4);
	el += ext_other(e + el, 21, total - base - 4);
	cr_assert_eq(make_msg(m, e, el), total);
	return total;
}

Test(sni, hello_of_16_kib_is_accepted_one_byte_more_is_too_big)
{
	static uint8_t m[SNI_MAX_HELLO + 64], rec[BUF_MAX];
	size_t mlen = make_msg_total(m, SNI_MAX_HELLO);
	size_t cuts[1] = { 1000 }, n;

	/* 16384 bytes: one full record, or two */
	n = wrap1(rec, m, mlen);
	cr_assert_eq(n, SNI_MAX_HELLO + 5);
	complete(rec, n, SNI_FOUND, "big.test");
	complete(rec, wrap(rec, m, mlen, cuts, 1, 3), SNI_FOUND, "big.test");

	/* 16385 bytes: too big as soon as the handshake header says so */
	mlen = make_msg_total(m, SNI_MAX_HELLO + 1);
	cuts[0] = 16000;
	n = wrap(rec, m, mlen, cuts, 1, 1);
	decided_at(rec, n, SNI_TOO_BIG, 9);
	/* the header itself split over records: decided at its last byte */
	{
		size_t c3[3] = { 1, 1, 1 };

		n = wrap(rec, m, mlen, c3, 3, 1);
		decided_at(rec, n, SNI_TOO_BIG, 6 + 6 + 6 + 5 + 1);
	}
	/* a header claiming 17 KiB, the rest garbage */
	memset(rec, 0xa5, 17 * 1024);
	memcpy(rec, "\x16\x03\x01\x40\x00\x01\x00\x44\x00", 9);
	decided_at(rec, 17 * 1024, SNI_TOO_BIG, 9);
	/* and the largest claim */
	memcpy(rec, "\x16\x03\x01\x40\x00\x01\xff\xff\xff", 9);
	decided_at(rec, 64, SNI_TOO_BIG, 9);
}

/* A hello within 16 KiB but spread over so many records that it needs more than SNI_MAX_INPUT
 * bytes: too big, decided before SNI_MAX_INPUT bytes are in. */
Test(sni, too_many_record_headers_are_too_big)
{
	static uint8_t m[SNI_MAX_HELLO + 64], rec[BUF_MAX];
	static size_t cuts[1024];
	size_t mlen = make_msg_total(m, 16000), n, first = 0;

	for (size_t i = 0; i < 159; i++)
		cuts[i] = 100; /* 160 records: 16000 + 800 bytes > SNI_MAX_INPUT */
	n = wrap(rec, m, mlen, cuts, 159, 1);
	cr_assert_eq(n, 16800);
	for (size_t k = 0; k <= n; k++) {
		enum sni_result r = parse(rec, k, NULL);

		if (r == SNI_NEED_MORE) {
			cr_assert_eq(first, 0, "need-more at %zu after too-big at %zu", k, first);
			continue;
		}
		cr_assert_eq(r, SNI_TOO_BIG, "prefix %zu: %s", k, rname(r));
		if (first == 0)
			first = k;
	}
	cr_assert_gt(first, 0);
	cr_assert_lt(first, SNI_MAX_INPUT, "decided at %zu", first);

	/* the same hello in 64 records (63 x 250 + the rest) fits */
	for (size_t i = 0; i < 63; i++)
		cuts[i] = 250;
	n = wrap(rec, m, mlen, cuts, 63, 1);
	cr_assert_leq(n, SNI_MAX_INPUT);
	complete(rec, n, SNI_FOUND, "big.test");
}

/* A 3000-byte hello in 1-byte records needs 18000 bytes: the SNI_MAX_INPUT bytes of it that
 * a staging buffer holds are decided (too big), and earlier than that. */
Test(sni, never_need_more_at_the_input_bound)
{
	static uint8_t rec[SNI_MAX_INPUT];
	static size_t cuts[4096];
	static uint8_t m[SNI_MAX_HELLO];
	const size_t nrec = SNI_MAX_INPUT / 6;
	size_t first = 0;

	make_msg_total(m, 3000);
	for (size_t i = 0; i < nrec - 1; i++)
		cuts[i] = 1;
	cr_assert_eq(wrap(rec, m, nrec, cuts, nrec - 1, 1), SNI_MAX_INPUT);
	for (size_t k = 0; k <= SNI_MAX_INPUT; k++) {
		enum sni_result r = parse(rec, k, NULL);

		if (r == SNI_NEED_MORE) {
			cr_assert_eq(first, 0, "need-more at %zu after too-big at %zu", k, first);
			continue;
		}
		cr_assert_eq(r, SNI_TOO_BIG, "prefix %zu: %s", k, rname(r));
		if (first == 0)
			first = k;
	}
	cr_assert_gt(first, 0);
	cr_assert_lt(first, SNI_MAX_INPUT);
}

Test(sni, result_names)
{
	cr_assert_str_eq(sni_result_name(SNI_NEED_MORE), "need-more");
	cr_assert_str_eq(sni_result_name(SNI_FOUND), "found");
	cr_assert_str_eq(sni_result_name(SNI_NO_SNI), "no-sni");
	cr_assert_str_eq(sni_result_name(SNI_NOT_TLS), "not-tls");
	cr_assert_str_eq(sni_result_name(SNI_TOO_BIG), "too-big");
	cr_assert_str_eq(sni_result_name(SNI_MALFORMED), "malformed");
}

/* ---- route matching ---- */

static struct config_sni_route routes[8];

/* Sets routes[] to the patterns (NULL-terminated), pool i for pattern i; returns their count. */
static uint32_t set_routes(const char *const *patterns)
{
	uint32_t n = 0;

	memset(routes, 0, sizeof(routes));
	for (; patterns[n] != NULL; n++) {
		snprintf(routes[n].pattern, sizeof(routes[n].pattern), "%s", patterns[n]);
		routes[n].pool = (uint16_t)n;
	}
	return n;
}

Test(sni, exact_wins_over_wildcards)
{
	static const char *const p[] = { "*.example.com", "*.api.example.com", "api.example.com",
					 "v1.api.example.com", NULL };
	uint32_t n = set_routes(p);

	cr_assert_eq(sni_route_match(routes, n, "api.example.com"), 2);
	cr_assert_eq(sni_route_match(routes, n, "v1.api.example.com"), 3);
	cr_assert_eq(sni_route_match(routes, n, "v2.api.example.com"), 1);
	cr_assert_eq(sni_route_match(routes, n, "www.example.com"), 0);
}

Test(sni, wildcard_needs_one_or_more_labels)
{
	static const char *const p[] = { "*.b.test", NULL };
	uint32_t n = set_routes(p);

	cr_assert_eq(sni_route_match(routes, n, "x.b.test"), 0);
	cr_assert_eq(sni_route_match(routes, n, "x.y.z.b.test"), 0);
	cr_assert_eq(sni_route_match(routes, n, "b.test"), -1);
	cr_assert_eq(sni_route_match(routes, n, ".b.test"), -1);
	cr_assert_eq(sni_route_match(routes, n, "x..b.test"), -1);
	cr_assert_eq(sni_route_match(routes, n, ".b.test"), -1);
	cr_assert_eq(sni_route_match(routes, n, "x..b.test"), -1);
	cr_assert_eq(sni_route_match(routes, n, "x.b.test.evil"), -1);
	cr_assert_eq(sni_route_match(routes, n, "test"), -1);
	cr_assert_eq(sni_route_match(routes, n, ""), -1);
}

Test(sni, longest_wildcard_suffix_wins_whatever_the_order)
{
	static const char *const p1[] = { "*.com", "*.example.com", "*.a.example.com", NULL };
	static const char *const p2[] = { "*.a.example.com", "*.example.com", "*.com", NULL };
	uint32_t n = set_routes(p1);

	cr_assert_eq(sni_route_match(routes, n, "x.a.example.com"), 2);
	cr_assert_eq(sni_route_match(routes, n, "a.example.com"), 1);
	cr_assert_eq(sni_route_match(routes, n, "example.com"), 0);
	cr_assert_eq(sni_route_match(routes, n, "other.org"), -1);
	n = set_routes(p2);
	cr_assert_eq(sni_route_match(routes, n, "x.a.example.com"), 0);
	cr_assert_eq(sni_route_match(routes, n, "a.example.com"), 1);
	cr_assert_eq(sni_route_match(routes, n, "example.com"), 2);
}

Test(sni, matching_ignores_case_and_takes_the_first_of_equals)
{
	static const char *const p[] = { "a.test", "*.b.test", "a.test", "*.b.test", NULL };
	uint32_t n = set_routes(p);

	cr_assert_eq(sni_route_match(routes, n, "A.TEST"), 0);
	cr_assert_eq(sni_route_match(routes, n, "X.B.Test"), 1);
	cr_assert_eq(sni_route_match(routes, n, "a.test.b.test"), 1);
	cr_assert_eq(sni_route_match(routes, 0, "a.test"), -1);
}

Test(sni, pattern_check)
{
	static const char *const good[] = { "a.test", "*.b.test", "*.com", "x", "A.Test", "_srv-1.x",
					    NULL };
	static const char *const bad[] = { "",	      "*",	 "*.",	    "**.a",   "a.*.b",
					   "*a.b",    "a*",	 "*.*.a",   "a..b",   ".a",
					   "a.",      "*.a.",	 "a b",	    "a/b",    "a:1",
					   "caf\xc3\xa9", NULL };
	char big[300];
	const char *why;

	for (size_t i = 0; good[i]; i++) {
		why = NULL;
		cr_assert_eq(sni_pattern_check(good[i], &why), 0, "%s: %s", good[i], why);
	}
	for (size_t i = 0; bad[i]; i++) {
		why = NULL;
		cr_assert_eq(sni_pattern_check(bad[i], &why), -EINVAL, "'%s' accepted", bad[i]);
		cr_assert(why != NULL && why[0] != '\0');
	}
	/* 255 bytes fit config_sni_route.pattern; a wildcard's 2 more do not */
	memset(big, 'a', sizeof(big));
	for (size_t i = 60; i < sizeof(big); i += 61)
		big[i] = '.';
	big[255] = '\0';
	cr_assert_eq(sni_pattern_check(big, &why), 0, "%s", why);
	{
		char wild[sizeof(big) + 2];

		snprintf(wild, sizeof(wild), "*.%s", big + 2);
		cr_assert_eq(sni_pattern_check(wild, &why), 0, "%s", why);
		snprintf(wild, sizeof(wild), "*.%s", big);
		cr_assert_eq(strlen(wild), 257);
		cr_assert_eq(sni_pattern_check(wild, &why), -EINVAL);
	}
	big[254] = '\0';
	memset(big, 'a', 250);
	big[250] = 'b';
	big[251] = '\0';
	cr_assert_eq(sni_pattern_check(big, &why), -EINVAL); /* a label over 63 */
}
