/* Unit tests for proxyproto: byte vectors written by hand from proxy-protocol.txt, every prefix
 * of each valid header, every rejection and where it happens, and build -> parse round trips. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/un.h>

#include "uproxy/proxyproto.h"

#define SIG 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a

/* Bytes the tests append after a header: client data that must be left alone. */
static const char trailer[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

static struct addr ip(const char *text, unsigned int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port) };
	struct addr a;

	if (inet_pton(AF_INET, text, &sin.sin_addr) == 1) {
		addr_from_sockaddr(&a, (struct sockaddr *)&sin, sizeof(sin));
	} else {
		cr_assert_eq(inet_pton(AF_INET6, text, &sin6.sin6_addr), 1, "bad fixture %s", text);
		addr_from_sockaddr(&a, (struct sockaddr *)&sin6, sizeof(sin6));
	}
	return a;
}

static void assert_addr(const struct addr *got, const char *text, unsigned int port)
{
	struct addr want = ip(text, port);
	char g[ADDR_STRLEN], w[ADDR_STRLEN];

	cr_assert(addr_equal(got, &want), "address %s, want %s", addr_format(got, g, sizeof(g)),
		  addr_format(&want, w, sizeof(w)));
}

/*
 * Checks that hdr[0..n) is one complete header: every shorter prefix asks for more, the whole
 * header and the header followed by client data both return exactly n, and the result of the
 * last parse is left in *r.
 */
static void complete(const uint8_t *hdr, size_t n, struct proxyproto_result *r)
{
	uint8_t buf[PROXYPROTO_MAX_LEN + sizeof(trailer)];

	cr_assert_leq(n, PROXYPROTO_MAX_LEN);
	for (size_t k = 0; k < n; k++) {
		int rc = proxyproto_parse(hdr, k, r);

		cr_assert_eq(rc, 0, "prefix %zu of %zu: %d (%s)", k, n, rc, r->why ? r->why : "");
	}
	memcpy(buf, hdr, n);
	memcpy(buf + n, trailer, sizeof(trailer) - 1);
	cr_assert_eq(proxyproto_parse(buf, n + sizeof(trailer) - 1, r), (int)n);
	cr_assert_eq(memcmp(buf + n, trailer, sizeof(trailer) - 1), 0);
	cr_assert_eq(proxyproto_parse(hdr, n, r), (int)n, "whole header: %s", r->why ? r->why : "");
	cr_assert_eq(r->len, n);
}

static void complete_str(const char *s, struct proxyproto_result *r)
{
	complete((const uint8_t *)s, strlen(s), r);
}

/*
 * Checks that hdr[0..n) is rejected with err, and first at prefix length at (0: do not check
 * where): shorter prefixes ask for more, every longer one gives the same error.
 */
static void rejected(const uint8_t *hdr, size_t n, int err, size_t at)
{
	struct proxyproto_result r;
	size_t first = 0;
	int rc;

	for (size_t k = 0; k <= n; k++) {
		rc = proxyproto_parse(hdr, k, &r);
		if (rc == 0 && first == 0)
			continue;
		cr_assert_eq(rc, err, "prefix %zu of %zu: %d, want %d", k, n, rc, err);
		cr_assert_not_null(r.why);
		if (first == 0)
			first = k;
	}
	cr_assert_neq(first, 0, "never rejected");
	if (at != 0)
		cr_assert_eq(first, at, "rejected at %zu, want %zu (%s)", first, at, r.why);
}

static void rejected_str(const char *s, size_t at)
{
	rejected((const uint8_t *)s, strlen(s), -EINVAL, at);
}

/* ---- v1 ---- */

Test(proxyproto, v1_tcp4_spec_example)
{
	struct proxyproto_result r;

	complete_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", &r);
	cr_assert_eq(r.len, 47);
	cr_assert_eq(r.version, 1);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	cr_assert_eq(r.family, AF_INET);
	assert_addr(&r.src, "192.168.0.1", 56324);
	assert_addr(&r.dst, "192.168.0.11", 443);
	cr_assert_eq(r.tlv_len, 0);
}

Test(proxyproto, v1_tcp4_extremes)
{
	struct proxyproto_result r;

	complete_str("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", &r);
	cr_assert_eq(r.len, 56); /* spec 2.1's longest TCP4 line */
	assert_addr(&r.src, "255.255.255.255", 65535);
	complete_str("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n", &r);
	assert_addr(&r.src, "0.0.0.0", 0);
	assert_addr(&r.dst, "10.0.0.1", 0);
}

Test(proxyproto, v1_tcp6)
{
	struct proxyproto_result r;

	complete_str("PROXY TCP6 2001:db8::1 ::1 40000 8443\r\n", &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	cr_assert_eq(r.family, AF_INET6);
	assert_addr(&r.src, "2001:db8::1", 40000);
	assert_addr(&r.dst, "::1", 8443);

	complete_str("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
		     "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n",
		     &r);
	cr_assert_eq(r.len, 104); /* spec 2.1's longest TCP6 line */
	assert_addr(&r.dst, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);

	/* what senders that use inet_ntop write for a v4-mapped client */
	complete_str("PROXY TCP6 ::ffff:10.1.2.3 ::ffff:10.0.0.1 1234 80\r\n", &r);
	assert_addr(&r.src, "::ffff:10.1.2.3", 1234);
}

Test(proxyproto, v1_unknown)
{
	struct proxyproto_result r;
	char line[PROXYPROTO_V1_MAX_LEN + 1];

	complete_str("PROXY UNKNOWN\r\n", &r);
	cr_assert_eq(r.len, 15);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	cr_assert_eq(r.family, AF_UNSPEC);
	cr_assert_eq(r.src.len, 0);

	/* the receiver ignores whatever precedes the CRLF (spec 2.1) */
	complete_str("PROXY UNKNOWN ffff:f...f:ffff whatever \x01\x7f 65535 x\r\n", &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);

	/* exactly 107 bytes is the longest line accepted */
	memset(line, 'x', sizeof(line));
	memcpy(line, "PROXY UNKNOWN ", 14);
	memcpy(line + PROXYPROTO_V1_MAX_LEN - 2, "\r\n", 3);
	cr_assert_eq(strlen(line), PROXYPROTO_V1_MAX_LEN);
	complete_str(line, &r);
	cr_assert_eq(r.len, PROXYPROTO_V1_MAX_LEN);
}

Test(proxyproto, v1_rejects_other_protocols)
{
	rejected_str("GET / HTTP/1.1\r\n", 1);
	rejected_str("\x16\x03\x01\x02\x00", 1); /* a TLS ClientHello */
	rejected_str("SSH-2.0-OpenSSH_9.2\r\n", 1);
	rejected_str("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 1);
	rejected_str("PROXY\tTCP4", 6);
	rejected_str("PROXYTCP4", 6);
	rejected_str("PROXY TCP5 1.2.3.4", 10);
	rejected_str("PROXY tcp4 1.2.3.4", 7);
	rejected_str("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 8); /* U could start UNKNOWN */
	rejected_str("PROXY  TCP4 1.2.3.4", 7);
	rejected_str("PROXY \r\n", 7);
	rejected_str("PROXY UNKNOWNX\r\n", 14);
	rejected_str("PROXY UNKNOW\r\n", 13);
}

Test(proxyproto, v1_rejects_bad_addresses)
{
	rejected_str("PROXY TCP4 256.1.1.1 1.1.1.1 1 2\r\n", 14);
	rejected_str("PROXY TCP4 01.2.3.4 1.1.1.1 1 2\r\n", 13);   /* leading zero */
	rejected_str("PROXY TCP4 1.2.3.04 1.1.1.1 1 2\r\n", 19);
	rejected_str("PROXY TCP4 1.2.3 1.1.1.1 1 2\r\n", 17);
	rejected_str("PROXY TCP4 1.2.3.4.5 1.1.1.1 1 2\r\n", 19);
	rejected_str("PROXY TCP4 1..2.3 1.1.1.1 1 2\r\n", 14);
	rejected_str("PROXY TCP4 .1.2.3 1.1.1.1 1 2\r\n", 12);
	rejected_str("PROXY TCP4 1.2.3. 1.1.1.1 1 2\r\n", 18);
	rejected_str("PROXY TCP4  1.2.3.4 1.1.1.1 1 2\r\n", 12); /* empty source */
	rejected_str("PROXY TCP4 ::1 1.1.1.1 1 2\r\n", 12);
	rejected_str("PROXY TCP4 1.2.3.4 1.1.1.x 1 2\r\n", 26);
	rejected_str("PROXY TCP4 a.b.c.d 1.1.1.1 1 2\r\n", 12);
	rejected_str("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 19);	   /* IPv4 in a TCP6 line */
	rejected_str("PROXY TCP6 ::1::2 ::1 1 2\r\n", 18);
	rejected_str("PROXY TCP6 g::1 ::1 1 2\r\n", 12);
	rejected_str("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", 29);
	rejected_str("PROXY TCP6 [::1] ::1 1 2\r\n", 12);
}

Test(proxyproto, v1_rejects_bad_ports)
{
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n", 32);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n", 35);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n", 29);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 00 80\r\n", 29);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 -1 80\r\n", 28);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 +1 80\r\n", 28);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8  80 80\r\n", 28);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 80 \r\n", 31); /* empty destination port */
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 80 80 \r\n", 33);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", 30);
}

Test(proxyproto, v1_rejects_bad_line_ends)
{
	char line[200];

	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31);	/* LF alone */
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", 32);
	rejected_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32);
	rejected_str("PROXY UNKNOWN\n", 14);
	rejected_str("PROXY UNKNOWN \n", 15);
	rejected_str("PROXY UNKNOWN x\ry\r\n", 17);

	/* no CRLF within 107 bytes: refused when the 107th byte arrives without one */
	memset(line, 'x', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	memcpy(line, "PROXY UNKNOWN ", 14);
	rejected_str(line, PROXYPROTO_V1_MAX_LEN);
	memcpy(line + PROXYPROTO_V1_MAX_LEN - 1, "\r\n", 2); /* CRLF at 107-108 is too late */
	rejected_str(line, PROXYPROTO_V1_MAX_LEN);
}

/* ---- v2, vectors written from spec section 2.2 ---- */

/* TCP over IPv4, 192.168.0.1:56324 -> 192.168.0.11:443 */
static const uint8_t v2_tcp4[] = {
	SIG, 0x21, 0x11, 0x00, 0x0c,
	192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb,
};

/* TCP over IPv6, [2001:db8::1]:40000 -> [::1]:8443 */
static const uint8_t v2_tcp6[] = {
	SIG, 0x21, 0x21, 0x00, 0x24,
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
	0x9c, 0x40, 0x20, 0xfb,
};

Test(proxyproto, v2_tcp4)
{
	struct proxyproto_result r;

	complete(v2_tcp4, sizeof(v2_tcp4), &r);
	cr_assert_eq(r.len, 28);
	cr_assert_eq(r.version, 2);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	cr_assert_eq(r.family, AF_INET);
	assert_addr(&r.src, "192.168.0.1", 56324);
	assert_addr(&r.dst, "192.168.0.11", 443);
	cr_assert_eq(r.tlv_off, 28);
	cr_assert_eq(r.tlv_len, 0);
}

Test(proxyproto, v2_tcp6)
{
	struct proxyproto_result r;

	complete(v2_tcp6, sizeof(v2_tcp6), &r);
	cr_assert_eq(r.len, 52);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	cr_assert_eq(r.family, AF_INET6);
	assert_addr(&r.src, "2001:db8::1", 40000);
	assert_addr(&r.dst, "::1", 8443);
}

Test(proxyproto, v2_tlvs_are_skipped)
{
	static const uint8_t h[] = {
		SIG, 0x21, 0x11, 0x00, 0x0c + 6 + 5 + 8 + 3,
		10, 0, 0, 1, 10, 0, 0, 2, 0x04, 0xd2, 0x00, 0x50,
		0x04, 0x00, 0x03, 'a', 'b', 'c',		/* NOOP */
		0x01, 0x00, 0x02, 'h', '2',			/* ALPN */
		0xea, 0x00, 0x05, 'v', 'p', 'c', 'e', '1',	/* AWS-style custom TLV */
		0x05, 0x00, 0x00,				/* empty UNIQUE_ID */
	};
	struct proxyproto_result r;

	complete(h, sizeof(h), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	assert_addr(&r.src, "10.0.0.1", 1234);
	assert_addr(&r.dst, "10.0.0.2", 80);
	cr_assert_eq(r.tlv_off, 28);
	cr_assert_eq(r.tlv_len, 22);
	cr_assert_eq(h[r.tlv_off], 0x04);
}

Test(proxyproto, v2_crc32c_checked)
{
	/* CRC32c (Castagnoli) of this header with the value zeroed, computed with an independent
	 * implementation that gives 0xe3069283 for "123456789"; network byte order as HAProxy. */
	uint8_t h[] = {
		SIG, 0x21, 0x11, 0x00, 0x13,
		192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb,
		0x03, 0x00, 0x04, 0x1c, 0x1a, 0xe9, 0xc6,
	};
	struct proxyproto_result r;

	complete(h, sizeof(h), &r);
	assert_addr(&r.src, "192.168.0.1", 56324);
	h[sizeof(h) - 1] ^= 1;
	rejected(h, sizeof(h), -EINVAL, sizeof(h));
	h[sizeof(h) - 1] ^= 1;
	h[16] ^= 1; /* a changed address no longer matches the checksum */
	rejected(h, sizeof(h), -EINVAL, sizeof(h));
}

Test(proxyproto, v2_local)
{
	static const uint8_t local[] = { SIG, 0x20, 0x00, 0x00, 0x00 };
	/* LOCAL must be accepted whatever its family, and its block skipped (spec 2.2) */
	static const uint8_t local_block[] = {
		SIG, 0x20, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
	};
	static const uint8_t local_odd_family[] = { SIG, 0x20, 0xff, 0x00, 0x02, 0xaa, 0xbb };
	struct proxyproto_result r;

	complete(local, sizeof(local), &r);
	cr_assert_eq(r.len, 16);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
	cr_assert_eq(r.family, AF_UNSPEC);
	complete(local_block, sizeof(local_block), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
	cr_assert_eq(r.src.len, 0);
	complete(local_odd_family, sizeof(local_odd_family), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
}

Test(proxyproto, v2_unspec_and_unix_are_unknown)
{
	static const uint8_t unspec[] = { SIG, 0x21, 0x00, 0x00, 0x00 };
	static const uint8_t unspec_block[] = { SIG, 0x21, 0x00, 0x00, 0x02, 0xff, 0xff };
	uint8_t unx[PROXYPROTO_V2_HDR_LEN + 216] = { SIG, 0x21, 0x31, 0x00, 0xd8 };
	struct proxyproto_result r;

	complete(unspec, sizeof(unspec), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	cr_assert_eq(r.family, AF_UNSPEC);
	complete(unspec_block, sizeof(unspec_block), &r); /* opaque: not read as TLVs */
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	memcpy(unx + 16, "/run/a.sock", 11);
	complete(unx, sizeof(unx), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	cr_assert_eq(r.family, AF_UNSPEC);
}

Test(proxyproto, v2_rejects_bad_signature)
{
	static const uint8_t sig[] = { SIG, 0x21, 0x11, 0x00, 0x0c };
	uint8_t h[sizeof(sig)];

	for (size_t i = 0; i < 12; i++) {
		memcpy(h, sig, sizeof(sig));
		h[i] ^= 0x40;
		rejected(h, sizeof(h), -EINVAL, i + 1);
	}
	rejected((const uint8_t *)"\r\n\r\nX", 5, -EINVAL, 5);
}

Test(proxyproto, v2_signature_alone_waits)
{
	static const uint8_t sig[] = { SIG };
	struct proxyproto_result r;

	for (size_t k = 0; k <= sizeof(sig); k++)
		cr_assert_eq(proxyproto_parse(sig, k, &r), 0);
}

Test(proxyproto, v2_rejects_bad_version_command_family)
{
	static const uint8_t v1[] = { SIG, 0x11, 0x11, 0x00, 0x0c };
	static const uint8_t v3[] = { SIG, 0x31, 0x11, 0x00, 0x0c };
	static const uint8_t cmd2[] = { SIG, 0x22, 0x11, 0x00, 0x0c };
	static const uint8_t cmdf[] = { SIG, 0x2f, 0x11, 0x00, 0x0c };
	static const uint8_t fam4[] = { SIG, 0x21, 0x41, 0x00, 0x0c };
	static const uint8_t tr3[] = { SIG, 0x21, 0x13, 0x00, 0x0c };
	static const uint8_t inet_unspec[] = { SIG, 0x21, 0x10, 0x00, 0x0c };
	static const uint8_t unspec_tcp[] = { SIG, 0x21, 0x01, 0x00, 0x00 };
	static const uint8_t udp4[] = { SIG, 0x21, 0x12, 0x00, 0x0c };
	static const uint8_t udp6[] = { SIG, 0x21, 0x22, 0x00, 0x24 };
	static const uint8_t unix_dgram[] = { SIG, 0x21, 0x32, 0x00, 0xd8 };

	rejected(v1, sizeof(v1), -EINVAL, 13);
	rejected(v3, sizeof(v3), -EINVAL, 13);
	rejected(cmd2, sizeof(cmd2), -EINVAL, 13);
	rejected(cmdf, sizeof(cmdf), -EINVAL, 13);
	rejected(fam4, sizeof(fam4), -EINVAL, 14);
	rejected(tr3, sizeof(tr3), -EINVAL, 14);
	rejected(inet_unspec, sizeof(inet_unspec), -EINVAL, 14);
	rejected(unspec_tcp, sizeof(unspec_tcp), -EINVAL, 14);
	rejected(udp4, sizeof(udp4), -EPROTONOSUPPORT, 14);
	rejected(udp6, sizeof(udp6), -EPROTONOSUPPORT, 14);
	rejected(unix_dgram, sizeof(unix_dgram), -EPROTONOSUPPORT, 14);
}

Test(proxyproto, v2_rejects_length_mismatch)
{
	static const uint8_t tcp4_short[] = { SIG, 0x21, 0x11, 0x00, 0x0b };
	static const uint8_t tcp6_short[] = { SIG, 0x21, 0x21, 0x00, 0x0c };
	static const uint8_t tcp6_35[] = { SIG, 0x21, 0x21, 0x00, 0x23 };
	static const uint8_t unix_short[] = { SIG, 0x21, 0x31, 0x00, 0x24 };
	static const uint8_t tcp4_none[] = { SIG, 0x21, 0x11, 0x00, 0x00 };

	rejected(tcp4_short, sizeof(tcp4_short), -EINVAL, 16);
	rejected(tcp6_short, sizeof(tcp6_short), -EINVAL, 16);
	rejected(tcp6_35, sizeof(tcp6_35), -EINVAL, 16);
	rejected(unix_short, sizeof(unix_short), -EINVAL, 16);
	rejected(tcp4_none, sizeof(tcp4_none), -EINVAL, 16);
}

Test(proxyproto, v2_rejects_malformed_tlvs)
{
	/* a TLV claiming 5 bytes where 2 remain: refused once its 3-byte head is in */
	static const uint8_t overrun[] = {
		SIG, 0x21, 0x11, 0x00, 0x0c + 5,
		1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2,
		0x04, 0x00, 0x05, 'a', 'b',
	};
	/* two bytes after the addresses cannot hold a TLV */
	static const uint8_t stub[] = {
		SIG, 0x21, 0x11, 0x00, 0x0c + 2,
		1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2, 0x04, 0x00,
	};
	static const uint8_t crc_len3[] = {
		SIG, 0x21, 0x11, 0x00, 0x0c + 6,
		1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2, 0x03, 0x00, 0x03, 0, 0, 0,
	};
	/* a TLV that overruns in the second of two */
	static const uint8_t second[] = {
		SIG, 0x21, 0x21, 0x00, 0x24 + 3 + 4,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
		0, 1, 0, 2, 0x04, 0x00, 0x00, 0x04, 0x00, 0x02, 'x',
	};

	rejected(overrun, sizeof(overrun), -EINVAL, 31);
	rejected(stub, sizeof(stub), -EINVAL, 16);
	rejected(crc_len3, sizeof(crc_len3), -EINVAL, 31);
	rejected(second, sizeof(second), -EINVAL, 58);
}

Test(proxyproto, v2_rejects_too_long)
{
	static const uint8_t max_plus_one[] = { SIG, 0x21, 0x11, 0x04, 0x01 };
	static const uint8_t huge[] = { SIG, 0x20, 0x00, 0xff, 0xff };
	static uint8_t at_max[PROXYPROTO_V2_MAX_LEN] = { SIG, 0x21, 0x11, 0x04, 0x00 };
	struct proxyproto_result r;
	size_t off = 28;

	rejected(max_plus_one, sizeof(max_plus_one), -E2BIG, 16);
	rejected(huge, sizeof(huge), -E2BIG, 16);
	/* exactly PROXYPROTO_V2_MAX_LEN: addresses, then NOOP TLVs filling the rest */
	while (off < sizeof(at_max)) {
		size_t v = sizeof(at_max) - off - 3;

		if (v > 200)
			v = 200;
		at_max[off] = 0x04;
		at_max[off + 1] = (uint8_t)(v >> 8);
		at_max[off + 2] = (uint8_t)v;
		off += 3 + v;
	}
	cr_assert_eq(off, sizeof(at_max));
	complete(at_max, sizeof(at_max), &r);
	cr_assert_eq(r.len, PROXYPROTO_V2_MAX_LEN);
}

/* ---- builders ---- */

Test(proxyproto, build_v1_text)
{
	struct addr s4 = ip("192.168.0.1", 56324), d4 = ip("192.168.0.11", 443);
	struct addr s6 = ip("2001:db8:0:0:1:0:0:1", 1), d6 = ip("::", 65535);
	char buf[PROXYPROTO_V1_BUILD_MAX];

	cr_assert_eq(proxyproto_build_v1(&s4, &d4, buf, sizeof(buf)), 47);
	cr_assert_str_eq(buf, "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
	proxyproto_build_v1(&s6, &d6, buf, sizeof(buf));
	cr_assert_str_eq(buf, "PROXY TCP6 2001:db8::1:0:0:1 :: 1 65535\r\n");
	proxyproto_build_v1(&s4, &d6, buf, sizeof(buf));
	cr_assert_str_eq(buf, "PROXY TCP6 ::ffff:c0a8:1 :: 56324 65535\r\n");
	proxyproto_build_v1(NULL, &d4, buf, sizeof(buf));
	cr_assert_str_eq(buf, "PROXY UNKNOWN\r\n");
}

Test(proxyproto, build_v1_longest_fits)
{
	struct addr a = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
	char buf[PROXYPROTO_V1_BUILD_MAX];

	cr_assert_eq(proxyproto_build_v1(&a, &a, buf, sizeof(buf)), 104);
	cr_assert_eq(proxyproto_build_v1(&a, &a, buf, 105), 104);
	cr_assert_eq(proxyproto_build_v1(&a, &a, buf, 104), -ENOSPC); /* no room for the NUL */
	cr_assert_eq(proxyproto_build_v1(&a, &a, NULL, 0), -ENOSPC);
}

Test(proxyproto, build_v2_bytes)
{
	struct addr s4 = ip("192.168.0.1", 56324), d4 = ip("192.168.0.11", 443);
	struct addr s6 = ip("2001:db8::1", 40000), d6 = ip("::1", 8443);
	static const uint8_t local[] = { SIG, 0x20, 0x00, 0x00, 0x00 };
	uint8_t buf[PROXYPROTO_V2_BUILD_MAX];

	cr_assert_eq(proxyproto_build_v2(&s4, &d4, buf, sizeof(buf)), (int)sizeof(v2_tcp4));
	cr_assert_arr_eq(buf, v2_tcp4, sizeof(v2_tcp4));
	cr_assert_eq(proxyproto_build_v2(&s6, &d6, buf, sizeof(buf)), (int)sizeof(v2_tcp6));
	cr_assert_arr_eq(buf, v2_tcp6, sizeof(v2_tcp6));
	cr_assert_eq(proxyproto_build_v2(NULL, NULL, buf, sizeof(buf)), 16);
	cr_assert_arr_eq(buf, local, sizeof(local));
	cr_assert_eq(proxyproto_build_v2(&s6, &d6, buf, 51), -ENOSPC);
	cr_assert_eq(proxyproto_build_v2(&s4, &d4, buf, 28), 28);
	cr_assert_eq(proxyproto_build_v2(&s4, &d4, buf, 27), -ENOSPC);
}

static void round_trip(const char *src, unsigned int sport, const char *dst, unsigned int dport,
		       int family, const char *want_src, const char *want_dst)
{
	struct addr s = ip(src, sport), d = ip(dst, dport);
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX];
	struct proxyproto_result r;
	int n;

	n = proxyproto_build_v1(&s, &d, text, sizeof(text));
	cr_assert_gt(n, 0);
	complete((const uint8_t *)text, (size_t)n, &r);
	cr_assert_eq(r.version, 1);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY, "%s", text);
	cr_assert_eq(r.family, family);
	assert_addr(&r.src, want_src, sport);
	assert_addr(&r.dst, want_dst, dport);

	n = proxyproto_build_v2(&s, &d, bin, sizeof(bin));
	cr_assert_gt(n, 0);
	complete(bin, (size_t)n, &r);
	cr_assert_eq(r.version, 2);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	cr_assert_eq(r.family, family);
	assert_addr(&r.src, want_src, sport);
	assert_addr(&r.dst, want_dst, dport);
}

Test(proxyproto, round_trips)
{
	round_trip("10.1.2.3", 50000, "10.0.0.1", 80, AF_INET, "10.1.2.3", "10.0.0.1");
	round_trip("0.0.0.0", 0, "255.255.255.255", 65535, AF_INET, "0.0.0.0", "255.255.255.255");
	round_trip("2001:db8::42", 1, "fe80::1", 443, AF_INET6, "2001:db8::42", "fe80::1");
	round_trip("::", 0, "::1", 65535, AF_INET6, "::", "::1");
	round_trip("1:0:2:0:3:0:4:0", 7, "1:2:3:4:5:6:7:8", 8, AF_INET6, "1:0:2:0:3:0:4:0",
		   "1:2:3:4:5:6:7:8");
	round_trip("1::", 7, "0:0:1::1:0:0", 8, AF_INET6, "1::", "0:0:1::1:0:0");
	/* mixed families: the IPv4 side travels v4-mapped */
	round_trip("192.0.2.7", 1234, "2001:db8::1", 80, AF_INET6, "::ffff:192.0.2.7",
		   "2001:db8::1");
	round_trip("2001:db8::1", 1234, "192.0.2.7", 80, AF_INET6, "2001:db8::1",
		   "::ffff:192.0.2.7");
}

Test(proxyproto, build_non_ip_family)
{
	struct addr s = ip("10.0.0.1", 1), odd;
	struct sockaddr sa = { .sa_family = AF_UNIX };
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX];
	/* LOCAL over UNSPEC (see proxyproto.h: a receiver must accept it), either side non-IP */
	static const uint8_t local[] = { SIG, 0x20, 0x00, 0x00, 0x00 };
	struct proxyproto_result r;

	addr_from_sockaddr(&odd, &sa, sizeof(sa));
	cr_assert_eq(proxyproto_build_v1(&s, &odd, text, sizeof(text)), 15);
	cr_assert_str_eq(text, "PROXY UNKNOWN\r\n");
	cr_assert_eq(proxyproto_build_v1(&odd, &s, text, sizeof(text)), 15);
	cr_assert_str_eq(text, "PROXY UNKNOWN\r\n");
	cr_assert_eq(proxyproto_build_v2(&odd, &s, bin, sizeof(bin)), 16);
	cr_assert_arr_eq(bin, local, sizeof(local));
	memset(bin, 0, sizeof(bin));
	cr_assert_eq(proxyproto_build_v2(&s, &odd, bin, sizeof(bin)), 16);
	cr_assert_arr_eq(bin, local, sizeof(local));
	cr_assert_eq(proxyproto_parse(bin, 16, &r), 16);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
	cr_assert_eq(proxyproto_build_v2(&odd, &s, bin, 15), -ENOSPC);
}

/* ---- unix sockets: what a session of a unix: listener has, and a unix upstream ---- */

/* An AF_UNIX address: path NULL for an unnamed peer (accept of a client that did not bind), a
 * path, or "@name" for an abstract one. */
static struct addr unix_addr(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t n = path ? strlen(path) : 0;
	struct addr a;

	memcpy(sun.sun_path, path ? path : "", n);
	if (n > 0 && path[0] == '@')
		sun.sun_path[0] = '\0';
	addr_from_sockaddr(&a, (struct sockaddr *)&sun,
			   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
				       (n > 0 && path[0] == '/')));
	return a;
}

/*
 * A client of a unix: listener: src is its unnamed peer address (getpeername), dst the
 * listener's path (getsockname). v1 can only say UNKNOWN; v2 is LOCAL over UNSPEC, exactly
 * these 16 bytes, with no address block (and the client bytes behind it left alone).
 */
Test(proxyproto, unix_client_gives_unknown_and_local)
{
	static const uint8_t want_v2[16] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
					     0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00 };
	const struct addr peers[] = { unix_addr(NULL), unix_addr("/tmp/client.sock"),
				      unix_addr("@client") };
	const struct addr dsts[] = { unix_addr("/run/uproxy/web.sock"), unix_addr("@uproxy") };
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX];
	struct proxyproto_result r;

	for (size_t i = 0; i < sizeof(peers) / sizeof(peers[0]); i++) {
		for (size_t j = 0; j < sizeof(dsts) / sizeof(dsts[0]); j++) {
			memset(text, 'x', sizeof(text));
			memset(bin, 0xee, sizeof(bin));
			cr_assert_eq(proxyproto_build_v1(&peers[i], &dsts[j], text, sizeof(text)),
				     15);
			cr_assert_str_eq(text, "PROXY UNKNOWN\r\n");
			complete((const uint8_t *)text, 15, &r);
			cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
			cr_assert_eq(r.family, AF_UNSPEC);
			cr_assert_eq(proxyproto_build_v2(&peers[i], &dsts[j], bin, sizeof(bin)),
				     16);
			cr_assert_arr_eq(bin, want_v2, 16);
			cr_assert_eq(bin[16], 0xee, "wrote past the header");
			complete(bin, 16, &r);
			cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
			cr_assert_eq(r.family, AF_UNSPEC);
			cr_assert_eq(r.src.len, 0);
			cr_assert_eq(r.dst.len, 0);
		}
	}
	/* a session without the peer's address at all (no getpeername) says the same */
	cr_assert_eq(proxyproto_build_v1(NULL, &dsts[0], text, sizeof(text)), 15);
	cr_assert_str_eq(text, "PROXY UNKNOWN\r\n");
	cr_assert_eq(proxyproto_build_v2(&peers[0], NULL, bin, sizeof(bin)), 16);
	cr_assert_arr_eq(bin, want_v2, 16);
}

/*
 * A TCP client relayed to a unix upstream: the header describes the client's connection (its
 * address and the one it reached), whatever the upstream's family. The builders take only
 * those two, so the upstream cannot change them: TCP4 here, byte for byte.
 */
Test(proxyproto, tcp_client_to_unix_upstream_is_tcp)
{
	struct addr client = ip("127.0.0.5", 40001), reached = ip("127.0.0.1", 8080);
	static const uint8_t want_v2[] = { SIG,	 0x21, 0x11, 0x00, 0x0c, 127, 0, 0, 5,
					   127,	 0,    0,    1,	   0x9c, 0x41, 0x1f, 0x90 };
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX];
	struct proxyproto_result r;

	cr_assert_eq(proxyproto_build_v1(&client, &reached, text, sizeof(text)), 43);
	cr_assert_str_eq(text, "PROXY TCP4 127.0.0.5 127.0.0.1 40001 8080\r\n");
	cr_assert_eq(proxyproto_build_v2(&client, &reached, bin, sizeof(bin)), (int)sizeof(want_v2));
	cr_assert_arr_eq(bin, want_v2, sizeof(want_v2));
	complete(bin, sizeof(want_v2), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_PROXY);
	assert_addr(&r.src, "127.0.0.5", 40001);
}

/*
 * --accept-proxy on either kind of listener: a header that carries no usable client address
 * (v2 LOCAL of any family, PROXY over UNSPEC or over AF_UNIX stream with paths, v1 UNKNOWN)
 * is accepted, consumed whole, and means "the connection's own endpoints": the result has no
 * address (the session keeps what accept gave it). Our own LOCAL header parses back this way.
 */
Test(proxyproto, unix_and_unspec_headers_mean_real_endpoints)
{
	static const uint8_t local_unspec[] = { SIG, 0x20, 0x00, 0x00, 0x00 };
	uint8_t local_unix[PROXYPROTO_V2_HDR_LEN + 216] = { SIG, 0x20, 0x31, 0x00, 0xd8 };
	uint8_t proxy_unix[PROXYPROTO_V2_HDR_LEN + 216 + 7] = { SIG, 0x21, 0x31, 0x00, 0xdf };
	static const uint8_t v1_unknown[] = "PROXY UNKNOWN\r\n";
	struct proxyproto_result r;

	complete(local_unspec, sizeof(local_unspec), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
	cr_assert(r.src.len == 0 && r.dst.len == 0 && r.family == AF_UNSPEC);
	memcpy(local_unix + 16, "/tmp/c.sock", 11);
	memcpy(local_unix + 16 + 108, "/run/s.sock", 11);
	complete(local_unix, sizeof(local_unix), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_LOCAL);
	cr_assert(r.src.len == 0 && r.dst.len == 0 && r.family == AF_UNSPEC);
	/* PROXY over AF_UNIX stream: the paths are skipped, the TLVs after them still checked */
	memcpy(proxy_unix + 16, "/tmp/c.sock", 11);
	memcpy(proxy_unix + 16 + 108, "/run/s.sock", 11);
	memcpy(proxy_unix + 16 + 216, (const uint8_t[]){ 0x04, 0x00, 0x04, 'n', 'o', 'o', 'p' },
	       7);
	complete(proxy_unix, sizeof(proxy_unix), &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	cr_assert(r.src.len == 0 && r.dst.len == 0 && r.family == AF_UNSPEC);
	cr_assert_eq(r.tlv_off, 16 + 216);
	cr_assert_eq(r.tlv_len, 7);
	proxy_unix[16 + 216 + 2] = 0x05; /* a TLV running past the end is still refused */
	cr_assert_eq(proxyproto_parse(proxy_unix, sizeof(proxy_unix), &r), -EINVAL);
	complete(v1_unknown, sizeof(v1_unknown) - 1, &r);
	cr_assert_eq(r.command, PROXYPROTO_CMD_UNKNOWN);
	cr_assert(r.src.len == 0 && r.dst.len == 0 && r.family == AF_UNSPEC);
}
