/* policy.h: the policy module's interface: which client class a query belongs to, and the
 * order of sites for a load-balanced name given site state and that class. Pure functions
 * over immutable inputs; the snapshot builder calls pol_order for every (name, class) when
 * state changes, and the DNS threads call pol_classify per query for names that order by
 * locality.
 *
 * Client classes: 0 = no locality information; 1..R = region r-1 of conf_t.regions (from a
 * subnet map, or from a GeoIP country/continent code mapped to a region); R+1..R+S = "site
 * s-R-1 is the nearest" (GeoIP location and geographic distance to the sites' locations). */
#ifndef MS_POLICY_H
#define MS_POLICY_H

#include "conf/conf.h"

typedef struct {
    bool up;       /* available */
    double load;   /* 0..1, < 0 unknown */
    double rtt_ms; /* < 0 unknown */
} pol_site_t;

/* Order the available sites of nm for client class cls into out (indices into conf_t.sites);
 * returns how many. weighted (if in nm->order) is not applied here: see pol_weighted_first. */
size_t pol_order(const conf_t *c, const conf_name_t *nm, const pol_site_t *st, unsigned cls,
                 size_t *out);

/* Number of client classes for conf c (1 + regions + sites). */
unsigned pol_class_count(const conf_t *c);
bool pol_uses_locality(const conf_name_t *nm);

typedef struct pol_classifier pol_classifier_t;

/* Build the subnet tries of conf's regions and open its GeoIP database (if any). */
int pol_classifier_new(const conf_t *c, pol_classifier_t **out, char *err, size_t errlen) MS_WUR;
void pol_classifier_free(pol_classifier_t *p);

/* The class of a client address (family AF_INET/AF_INET6; addr 4 or 16 bytes, bits past
 * src_prefix zero) and the prefix length the answer holds for (the ECS scope). Thread-safe;
 * GeoIP results are cached per thread. */
unsigned pol_classify(const pol_classifier_t *p, int family, const uint8_t *addr,
                      unsigned src_prefix, unsigned *scope);

/* Great-circle distance in km. */
double pol_distance_km(double lat1, double lon1, double lat2, double lon2);

#endif
