/* TEMPORARY: replaced by the sni branch. */
#ifndef UPROXY_SNI_H
#define UPROXY_SNI_H
#include <stddef.h>
#include <stdint.h>
struct config_sni_route;
enum sni_result { SNI_NEED_MORE, SNI_FOUND, SNI_NO_SNI, SNI_NOT_TLS, SNI_TOO_BIG, SNI_MALFORMED };
enum sni_result sni_parse(const uint8_t *buf, size_t len, char *name, size_t namelen);
const char *sni_result_name(enum sni_result r);
int sni_route_match(const struct config_sni_route *routes, uint32_t n, const char *name);
int sni_pattern_check(const char *pattern, const char **why);
#endif
