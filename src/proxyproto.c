/* proxyproto: reads and writes PROXY protocol v1/v2 headers (HAProxy's proxy-protocol.txt).
 * Strict and stateless: each call decides from buf[0..len) alone, rejects a bad header at the
 * first byte that proves it bad, and never reads past len or past the header's own end. */
#include "uproxy/proxyproto.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* v1: "PROXY " then the protocol, which decides what follows (spec 2.1). */
#define V1_PREFIX      "PROXY "
#define V1_PREFIX_LEN  6
#define V1_TCP4	       "TCP4 "
#define V1_TCP6	       "TCP6 "
#define V1_UNKNOWN     "UNKNOWN"
#define V1_PORT_MAX    65535u
#define V1_IPV4_MAXTOK 15 /* "255.255.255.255" */
#define V1_IPV6_MAXTOK 45 /* INET6_ADDRSTRLEN - 1: eight groups, or six and a dotted quad */

/* v2 (spec 2.2): signature, then version and command in byte 13, family and transport in 14. */
static const uint8_t v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
#define V2_SIG_LEN	   12
#define V2_VERSION	   0x20 /* high nibble of byte 13 */
#define V2_VERSION_MASK	   0xf0
#define V2_CMD_MASK	   0x0f
#define V2_CMD_LOCAL	   0x0
#define V2_CMD_PROXY	   0x1
#define V2_FAM_UNSPEC	   0x00
#define V2_FAM_TCP4	   0x11
#define V2_FAM_UDP4	   0x12
#define V2_FAM_TCP6	   0x21
#define V2_FAM_UDP6	   0x22
#define V2_FAM_UNIX_STREAM 0x31
#define V2_FAM_UNIX_DGRAM  0x32
#define V2_ADDRLEN_INET	   12  /* 2 x 4-byte address, 2 x 2-byte port */
#define V2_ADDRLEN_INET6   36  /* 2 x 16-byte address, 2 x 2-byte port */
#define V2_ADDRLEN_UNIX	   216 /* 2 x 108-byte path */
#define V2_TLV_HDR_LEN	   3   /* type, 16-bit length */
#define V2_TYPE_CRC32C	   0x03
#define V2_CRC32C_LEN	   4
#define CRC32C_POLY	   0x82f63b78u /* Castagnoli, reflected (RFC 4960 appendix B) */

static int reject(struct proxyproto_result *out, int err, const char *why)
{
	out->why = why;
	return err;
}

/* ---- v1 ---- */

/* A v1 line needs more bytes; that is an error once PROXYPROTO_V1_MAX_LEN bytes are in. */
static int v1_more(size_t n, struct proxyproto_result *out)
{
	if (n >= PROXYPROTO_V1_MAX_LEN)
		return reject(out, -EINVAL, "v1: no CRLF within 107 bytes");
	return 0;
}

/*
 * The v1 field checkers take a token t[0..n) and whether its delimiter was seen (complete).
 * An incomplete token passes when it can still grow into a valid one, so that a header split
 * across reads is accepted and a bad one is refused at its first bad byte.
 */

/* Four decimal numbers 0-255, no leading zeroes (spec 2.1: octal confusion). */
static bool v1_ipv4(const char *t, size_t n, bool complete, struct in_addr *a)
{
	uint32_t ip = 0;
	unsigned int val = 0, digits = 0, dots = 0;

	for (size_t i = 0; i < n; i++) {
		if (t[i] >= '0' && t[i] <= '9') {
			if (digits == 1 && val == 0)
				return false;
			val = val * 10 + (unsigned int)(t[i] - '0');
			if (val > 255)
				return false;
			digits++;
		} else if (t[i] == '.' && digits > 0 && dots < 3) {
			ip = ip << 8 | val;
			val = digits = 0;
			dots++;
		} else {
			return false;
		}
	}
	if (!complete)
		return true;
	if (dots != 3 || digits == 0)
		return false;
	a->s_addr = htonl(ip << 8 | val);
	return true;
}

/* Hex groups and colons (a dotted-quad tail too, as senders using inet_ntop write v4-mapped
 * addresses); the complete token must be what inet_pton calls an IPv6 address. */
static bool v1_ipv6(const char *t, size_t n, bool complete, struct in6_addr *a)
{
	char s[V1_IPV6_MAXTOK + 1];

	if (n > V1_IPV6_MAXTOK)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isxdigit((unsigned char)t[i]) && t[i] != ':' && t[i] != '.')
			return false;
	}
	if (!complete)
		return true;
	memcpy(s, t, n);
	s[n] = '\0';
	return inet_pton(AF_INET6, s, a) == 1;
}

/* A decimal 0-65535, no leading zeroes. */
static bool v1_port(const char *t, size_t n, bool complete, uint16_t *port)
{
	unsigned int v = 0;

	if (n == 0)
		return !complete;
	if (n > 1 && t[0] == '0')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (t[i] < '0' || t[i] > '9')
			return false;
		v = v * 10 + (unsigned int)(t[i] - '0');
		if (v > V1_PORT_MAX)
			return false;
	}
	*port = (uint16_t)v;
	return true;
}

/* A CR at s[i] (i < n) must be followed by LF; returns the line length, 0 or an error. */
static int v1_crlf(const char *s, size_t i, size_t n, struct proxyproto_result *out)
{
	if (i + 1 >= n)
		return v1_more(n, out);
	if (s[i + 1] != '\n')
		return reject(out, -EINVAL, "v1: CR not followed by LF");
	return (int)(i + 2);
}

/* "PROXY UNKNOWN" then CRLF, or a space and anything but CR and LF up to the CRLF (spec 2.1:
 * the receiver ignores it). Starts at the byte after "UNKNOWN". */
static int v1_unknown(const char *s, size_t pos, size_t n, struct proxyproto_result *out)
{
	int rc;

	if (pos >= n)
		return v1_more(n, out);
	if (s[pos] != '\r' && s[pos] != ' ')
		return reject(out, -EINVAL, "v1: expected CRLF or a space after UNKNOWN");
	for (size_t i = pos; i < n; i++) {
		if (s[i] == '\n')
			return reject(out, -EINVAL, "v1: LF without CR");
		if (s[i] == '\r') {
			rc = v1_crlf(s, i, n, out);
			if (rc > 0)
				out->command = PROXYPROTO_CMD_UNKNOWN;
			return rc;
		}
	}
	return v1_more(n, out);
}

static void set_in4(struct addr *a, const struct in_addr *ip, uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };

	sin.sin_addr = *ip;

	addr_from_sockaddr(a, (const struct sockaddr *)&sin, sizeof(sin));
}

static void set_in6(struct addr *a, const struct in6_addr *ip, uint16_t port)
{
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };

	sin6.sin6_addr = *ip;
	addr_from_sockaddr(a, (const struct sockaddr *)&sin6, sizeof(sin6));
}

/* "TCP4 " or "TCP6 " seen: src SP dst SP sport SP dport CRLF, starting at pos. */
static int v1_tcp(const char *s, size_t pos, size_t n, int family, struct proxyproto_result *out)
{
	static const char *const why[4] = {
		"v1: bad source address",
		"v1: bad destination address",
		"v1: bad source port (0-65535, no leading zeroes)",
		"v1: bad destination port (0-65535, no leading zeroes)",
	};
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} ip[2];
	uint16_t port[2] = { 0, 0 };

	memset(ip, 0, sizeof(ip));
	for (int field = 0; field < 4; field++) {
		char delim = field < 3 ? ' ' : '\r';
		size_t start = pos;
		bool complete, ok;

		while (pos < n && s[pos] != delim)
			pos++;
		complete = pos < n;
		if (field >= 2)
			ok = v1_port(s + start, pos - start, complete, &port[field - 2]);
		else if (family == AF_INET)
			ok = v1_ipv4(s + start, pos - start, complete, &ip[field].v4);
		else
			ok = v1_ipv6(s + start, pos - start, complete, &ip[field].v6);
		if (!ok)
			return reject(out, -EINVAL, why[field]);
		if (!complete)
			return v1_more(n, out);
		pos++;
	}
	if (pos >= n)
		return v1_more(n, out);
	if (s[pos] != '\n')
		return reject(out, -EINVAL, "v1: CR not followed by LF");
	out->command = PROXYPROTO_CMD_PROXY;
	out->family = family;
	if (family == AF_INET) {
		set_in4(&out->src, &ip[0].v4, port[0]);
		set_in4(&out->dst, &ip[1].v4, port[1]);
	} else {
		set_in6(&out->src, &ip[0].v6, port[0]);
		set_in6(&out->dst, &ip[1].v6, port[1]);
	}
	return (int)(pos + 1);
}

/* True when t[0..n) is kw or a beginning of it; *whole says which. */
static bool v1_keyword(const char *t, size_t n, const char *kw, bool *whole)
{
	size_t k = strlen(kw);

	*whole = n >= k;
	return memcmp(t, kw, n < k ? n : k) == 0;
}

static int v1_parse(const uint8_t *buf, size_t len, struct proxyproto_result *out)
{
	const char *s = (const char *)buf;
	size_t n = len < PROXYPROTO_V1_MAX_LEN ? len : PROXYPROTO_V1_MAX_LEN;
	const char *t = s + V1_PREFIX_LEN;
	size_t tn;
	bool whole;

	out->version = 1;
	if (memcmp(s, V1_PREFIX, n < V1_PREFIX_LEN ? n : V1_PREFIX_LEN) != 0)
		return reject(out, -EINVAL, "not a PROXY protocol header");
	if (n < V1_PREFIX_LEN)
		return v1_more(n, out);
	tn = n - V1_PREFIX_LEN;
	if (v1_keyword(t, tn, V1_TCP4, &whole))
		return whole ? v1_tcp(s, V1_PREFIX_LEN + strlen(V1_TCP4), n, AF_INET, out)
			     : v1_more(n, out);
	if (v1_keyword(t, tn, V1_TCP6, &whole))
		return whole ? v1_tcp(s, V1_PREFIX_LEN + strlen(V1_TCP6), n, AF_INET6, out)
			     : v1_more(n, out);
	if (v1_keyword(t, tn, V1_UNKNOWN, &whole))
		return whole ? v1_unknown(s, V1_PREFIX_LEN + strlen(V1_UNKNOWN), n, out)
			     : v1_more(n, out);
	return reject(out, -EINVAL, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
}

/* ---- v2 ---- */

static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n)
{
	/* Bitwise: a header is at most ~1 KiB and a CRC TLV is rare, so no table. */
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (CRC32C_POLY & (0u - (crc & 1u)));
	}
	return crc;
}

/* Spec 2.2.3: the CRC32c of the whole header with the checksum field zeroed. */
static bool v2_crc_ok(const uint8_t *buf, size_t total, size_t val_off)
{
	static const uint8_t zero[V2_CRC32C_LEN];
	uint32_t crc = 0xffffffffu, want;

	crc = crc32c_update(crc, buf, val_off);
	crc = crc32c_update(crc, zero, V2_CRC32C_LEN);
	crc = crc32c_update(crc, buf + val_off + V2_CRC32C_LEN, total - val_off - V2_CRC32C_LEN);
	want = (uint32_t)buf[val_off] << 24 | (uint32_t)buf[val_off + 1] << 16 |
	       (uint32_t)buf[val_off + 2] << 8 | buf[val_off + 3];
	return ~crc == want;
}

/*
 * Walks the TLVs in buf[off..total) as far as len bytes allow: each one must fit in the header
 * (so a bad one is refused as soon as its 3-byte head arrives), a CRC32c TLV must be 4 bytes and
 * alone. Its value offset goes to *crc_off (0: none). Returns 0 or an error.
 */
static int v2_tlvs(const uint8_t *buf, size_t len, size_t off, size_t total, size_t *crc_off,
		   struct proxyproto_result *out)
{
	*crc_off = 0;
	while (off < total) {
		size_t vlen;

		if (total - off < V2_TLV_HDR_LEN)
			return reject(out, -EINVAL, "v2: trailing bytes too short for a TLV");
		if (off + V2_TLV_HDR_LEN > len)
			return 0;
		vlen = (size_t)buf[off + 1] << 8 | buf[off + 2];
		if (vlen > total - off - V2_TLV_HDR_LEN)
			return reject(out, -EINVAL, "v2: TLV runs past the end of the header");
		if (buf[off] == V2_TYPE_CRC32C) {
			if (vlen != V2_CRC32C_LEN)
				return reject(out, -EINVAL, "v2: CRC32c TLV is not 4 bytes");
			if (*crc_off != 0)
				return reject(out, -EINVAL, "v2: more than one CRC32c TLV");
			*crc_off = off + V2_TLV_HDR_LEN;
		}
		off += V2_TLV_HDR_LEN + vlen;
	}
	return 0;
}

/* The address block length the family/transport byte needs with the PROXY command, or an
 * error: datagram transports cannot arrive on our TCP listener, other values are invalid. */
static int v2_addr_len(uint8_t fam, struct proxyproto_result *out)
{
	switch (fam) {
	case V2_FAM_UNSPEC:
		return 0;
	case V2_FAM_TCP4:
		return V2_ADDRLEN_INET;
	case V2_FAM_TCP6:
		return V2_ADDRLEN_INET6;
	case V2_FAM_UNIX_STREAM:
		return V2_ADDRLEN_UNIX;
	case V2_FAM_UDP4:
	case V2_FAM_UDP6:
	case V2_FAM_UNIX_DGRAM:
		return reject(out, -EPROTONOSUPPORT, "v2: datagram transport on a TCP connection");
	default:
		return reject(out, -EINVAL, "v2: unknown address family or transport");
	}
}

static void v2_addresses(const uint8_t *a, uint8_t fam, struct proxyproto_result *out)
{
	struct in_addr s4, d4;
	struct in6_addr s6, d6;
	uint16_t sport, dport;

	if (fam == V2_FAM_TCP4) {
		memcpy(&s4, a, 4);
		memcpy(&d4, a + 4, 4);
		sport = (uint16_t)(a[8] << 8 | a[9]);
		dport = (uint16_t)(a[10] << 8 | a[11]);
		set_in4(&out->src, &s4, sport);
		set_in4(&out->dst, &d4, dport);
		out->family = AF_INET;
	} else {
		memcpy(&s6, a, 16);
		memcpy(&d6, a + 16, 16);
		sport = (uint16_t)(a[32] << 8 | a[33]);
		dport = (uint16_t)(a[34] << 8 | a[35]);
		set_in6(&out->src, &s6, sport);
		set_in6(&out->dst, &d6, dport);
		out->family = AF_INET6;
	}
}

static int v2_parse(const uint8_t *buf, size_t len, struct proxyproto_result *out)
{
	size_t block, total, addr_len = 0, crc_off = 0;
	uint8_t cmd, fam;
	int rc;

	out->version = 2;
	if (memcmp(buf, v2_sig, len < V2_SIG_LEN ? len : V2_SIG_LEN) != 0)
		return reject(out, -EINVAL, "not a PROXY protocol header");
	if (len <= V2_SIG_LEN)
		return 0;
	if ((buf[12] & V2_VERSION_MASK) != V2_VERSION)
		return reject(out, -EINVAL, "v2: version is not 2");
	cmd = buf[12] & V2_CMD_MASK;
	if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
		return reject(out, -EINVAL, "v2: command is neither LOCAL nor PROXY");
	if (len <= 13)
		return 0;
	fam = buf[13];
	if (cmd == V2_CMD_PROXY) { /* LOCAL discards the family (spec 2.2) */
		rc = v2_addr_len(fam, out);
		if (rc < 0)
			return rc;
		addr_len = (size_t)rc;
	}
	if (len < PROXYPROTO_V2_HDR_LEN)
		return 0;
	block = (size_t)buf[14] << 8 | buf[15];
	if (block > PROXYPROTO_V2_MAX_BLOCK)
		return reject(out, -E2BIG, "v2: header longer than we accept");
	if (block < addr_len)
		return reject(out, -EINVAL, "v2: address block too short for its family");
	total = PROXYPROTO_V2_HDR_LEN + block;
	/* TLVs follow a known address block; with UNSPEC or LOCAL the block is opaque. */
	if (cmd == V2_CMD_PROXY && fam != V2_FAM_UNSPEC) {
		rc = v2_tlvs(buf, len, PROXYPROTO_V2_HDR_LEN + addr_len, total, &crc_off, out);
		if (rc < 0)
			return rc;
	}
	if (len < total)
		return 0;
	if (crc_off != 0 && !v2_crc_ok(buf, total, crc_off))
		return reject(out, -EINVAL, "v2: CRC32c mismatch");

	if (cmd == V2_CMD_LOCAL) {
		out->command = PROXYPROTO_CMD_LOCAL;
	} else if (fam == V2_FAM_TCP4 || fam == V2_FAM_TCP6) {
		out->command = PROXYPROTO_CMD_PROXY;
		v2_addresses(buf + PROXYPROTO_V2_HDR_LEN, fam, out);
	} else {
		out->command = PROXYPROTO_CMD_UNKNOWN; /* unix stream or UNSPEC: real endpoints */
	}
	if (cmd == V2_CMD_PROXY && fam != V2_FAM_UNSPEC) {
		out->tlv_off = (uint16_t)(PROXYPROTO_V2_HDR_LEN + addr_len);
		out->tlv_len = (uint16_t)(total - out->tlv_off);
	}
	return (int)total;
}

int proxyproto_parse(const uint8_t *buf, size_t len, struct proxyproto_result *out)
{
	int rc;

	memset(out, 0, sizeof(*out));
	out->family = AF_UNSPEC;
	if (len == 0)
		return 0;
	if (buf[0] == V1_PREFIX[0])
		rc = v1_parse(buf, len, out);
	else if (buf[0] == v2_sig[0])
		rc = v2_parse(buf, len, out);
	else
		rc = reject(out, -EINVAL, "not a PROXY protocol header");
	if (rc > 0)
		out->len = (uint32_t)rc;
	return rc;
}

/* ---- builders ---- */

static bool is_ip(const struct addr *a)
{
	return a != NULL && (a->u.sa.sa_family == AF_INET || a->u.sa.sa_family == AF_INET6);
}

/* a's address as IPv6, an IPv4 one v4-mapped (::ffff:a.b.c.d, RFC 4291 2.5.5.2). */
static struct in6_addr as_in6(const struct addr *a)
{
	struct in6_addr r;

	if (a->u.sa.sa_family == AF_INET6)
		return a->u.in6.sin6_addr;
	memset(&r, 0, sizeof(r));
	r.s6_addr[10] = 0xff;
	r.s6_addr[11] = 0xff;
	memcpy(&r.s6_addr[12], &a->u.in4.sin_addr, 4);
	return r;
}

static uint16_t port_of(const struct addr *a)
{
	return ntohs(a->u.sa.sa_family == AF_INET ? a->u.in4.sin_port : a->u.in6.sin6_port);
}

/* Writes ip in RFC 5952 form with hex groups only (the spec's v1 form; inet_ntop would write
 * a v4-mapped address as a dotted quad) into buf (INET6_ADDRSTRLEN bytes). */
static void v6_format(const struct in6_addr *ip, char *buf, size_t len)
{
	unsigned int w[8];
	int best = -1, bestlen = 0, i, j;
	size_t n = 0;

	for (i = 0; i < 8; i++)
		w[i] = (unsigned int)ip->s6_addr[2 * i] << 8 | ip->s6_addr[2 * i + 1];
	for (i = 0; i < 8; i = j + 1) {
		for (j = i; j < 8 && w[j] == 0; j++)
			;
		if (j - i > bestlen) {
			best = i;
			bestlen = j - i;
		}
	}
	if (bestlen < 2) /* RFC 5952 4.2.2: a single 0 group is not shortened */
		best = -1;
	buf[0] = '\0';
	for (i = 0; i < 8 && n < len; i++) {
		if (i == best) {
			n += (size_t)snprintf(buf + n, len - n, "::");
			i += bestlen - 1;
			continue;
		}
		n += (size_t)snprintf(buf + n, len - n, "%s%x",
				      i > 0 && i != best + bestlen ? ":" : "", w[i]);
	}
}

int proxyproto_build_v1(const struct addr *src, const struct addr *dst, char *out, size_t outlen)
{
	char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	int n;

	if (!is_ip(src) || !is_ip(dst)) {
		n = snprintf(out, outlen, "PROXY UNKNOWN\r\n");
	} else if (src->u.sa.sa_family == AF_INET && dst->u.sa.sa_family == AF_INET) {
		inet_ntop(AF_INET, &src->u.in4.sin_addr, a, sizeof(a));
		inet_ntop(AF_INET, &dst->u.in4.sin_addr, b, sizeof(b));
		n = snprintf(out, outlen, "PROXY TCP4 %s %s %u %u\r\n", a, b, port_of(src),
			     port_of(dst));
	} else {
		struct in6_addr s6 = as_in6(src), d6 = as_in6(dst);

		v6_format(&s6, a, sizeof(a));
		v6_format(&d6, b, sizeof(b));
		n = snprintf(out, outlen, "PROXY TCP6 %s %s %u %u\r\n", a, b, port_of(src),
			     port_of(dst));
	}
	if (n < 0 || (size_t)n >= outlen)
		return -ENOSPC;
	return n;
}

int proxyproto_build_v2(const struct addr *src, const struct addr *dst, uint8_t *out, size_t outlen)
{
	uint8_t h[PROXYPROTO_V2_BUILD_MAX];
	uint8_t *p = h + PROXYPROTO_V2_HDR_LEN;
	size_t block = 0;

	memcpy(h, v2_sig, V2_SIG_LEN);
	h[12] = V2_VERSION | V2_CMD_PROXY;
	h[13] = V2_FAM_UNSPEC;
	if (!is_ip(src) || !is_ip(dst)) {
		/* No addresses, or not IP (a unix: client): LOCAL over UNSPEC, the form every
		 * receiver must accept (PROXY over UNSPEC it may reject), as HAProxy sends. */
		h[12] = V2_VERSION | V2_CMD_LOCAL;
	} else if (src->u.sa.sa_family == AF_INET && dst->u.sa.sa_family == AF_INET) {
		h[13] = V2_FAM_TCP4;
		memcpy(p, &src->u.in4.sin_addr, 4);
		memcpy(p + 4, &dst->u.in4.sin_addr, 4);
		memcpy(p + 8, &src->u.in4.sin_port, 2);
		memcpy(p + 10, &dst->u.in4.sin_port, 2);
		block = V2_ADDRLEN_INET;
	} else {
		struct in6_addr s6 = as_in6(src), d6 = as_in6(dst);
		uint16_t sport = htons(port_of(src)), dport = htons(port_of(dst));

		h[13] = V2_FAM_TCP6;
		memcpy(p, &s6, 16);
		memcpy(p + 16, &d6, 16);
		memcpy(p + 32, &sport, 2);
		memcpy(p + 34, &dport, 2);
		block = V2_ADDRLEN_INET6;
	}
	h[14] = (uint8_t)(block >> 8);
	h[15] = (uint8_t)block;
	if (outlen < PROXYPROTO_V2_HDR_LEN + block)
		return -ENOSPC;
	memcpy(out, h, PROXYPROTO_V2_HDR_LEN + block);
	return (int)(PROXYPROTO_V2_HDR_LEN + block);
}
