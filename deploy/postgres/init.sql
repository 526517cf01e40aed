-- The compose file's sample database: the tables cdcsync.yaml captures, a role for
-- capture (REPLICATION, read access) and the analytics schema the sample integration
-- writes to. Run once by the postgres image on an empty data directory.

CREATE TABLE public.customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text,
    phone text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD 'cdc';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc;
-- capture creates the publication; the state store and the analytics sink create schemas.
GRANT CREATE ON DATABASE app TO cdc;
ALTER TABLE public.customers OWNER TO cdc;
ALTER TABLE public.orders OWNER TO cdc;
