// PostgreSQL JDBC driver smoke through pgward (guardrails + mask-pii loaded): run by
// tests/tests/drivers.rs as a single-file program (java -cp postgresql.jar Smoke.java PORT DB).
// Prints SMOKE OK; any failed check throws.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.Arrays;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Smoke {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void expectState(String state, Statement st, String sql) {
        try {
            st.execute(sql);
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()), sql + ": " + e.getSQLState() + " " + e.getMessage());
            return;
        }
        throw new AssertionError("no error " + state + " for " + sql);
    }

    static long scalar(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            check(rs.next(), "a row for " + sql);
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String base = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[1]
            + "?user=alice&password=alice-pw&sslmode=disable";
        // Simple query mode as well as the default extended protocol.
        try (Connection c = DriverManager.getConnection(base + "&preferQueryMode=simple")) {
            check(scalar(c, "SELECT 1") == 1, "simple SELECT 1");
        }
        // prepareThreshold=1: named server-side statements from the first use, binary results.
        try (Connection c = DriverManager.getConnection(base + "&prepareThreshold=1&binaryTransfer=true")) {
            check(scalar(c, "SELECT 1") == 1, "SELECT 1");
            Timestamp ts = Timestamp.valueOf("2026-12-04 01:02:03");
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT ?::int + 1, ?::text || '!', ?::numeric * 2, ?::timestamp, ?::bool, ?::bytea, ?::text")) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, 41);
                    ps.setString(2, "hi");
                    ps.setBigDecimal(3, new BigDecimal("1.25"));
                    ps.setTimestamp(4, ts);
                    ps.setBoolean(5, true);
                    ps.setBytes(6, new byte[] {0, 1});
                    ps.setNull(7, Types.VARCHAR);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "a row");
                        check(rs.getInt(1) == 42, "int");
                        check(rs.getString(2).equals("hi!"), "text");
                        check(rs.getBigDecimal(3).compareTo(new BigDecimal("2.50")) == 0, "numeric");
                        check(rs.getTimestamp(4).equals(ts), "timestamp " + rs.getTimestamp(4));
                        check(rs.getBoolean(5), "bool");
                        check(Arrays.equals(rs.getBytes(6), new byte[] {0, 1}), "bytea");
                        check(rs.getString(7) == null, "null");
                    }
                }
            }
            // Masked for this identity.
            try (PreparedStatement ps = c.prepareStatement("SELECT email FROM customers WHERE id = ?")) {
                for (int i = 0; i < 2; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "a customer");
                        String email = rs.getString(1);
                        check(email != null && !email.equals("ada@example.com"), "masked: " + email);
                    }
                }
            }
            // Metadata the driver reads from the catalog (tools do this on connect).
            try (ResultSet rs = c.getMetaData().getTables(null, "public", "%", new String[] {"TABLE"})) {
                boolean found = false;
                while (rs.next()) {
                    found |= rs.getString("TABLE_NAME").equals("items");
                }
                check(found, "getTables lists items");
            }

            // Transactions.
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.execute("INSERT INTO items (name) VALUES ('jdbc rolled back')");
                c.rollback();
                st.execute("INSERT INTO items (name) VALUES ('jdbc kept')");
                c.commit();
                // An error inside a transaction aborts it until the rollback.
                expectState("22012", st, "SELECT 1 / 0");
                expectState("25P02", st, "SELECT 1");
                c.rollback();
            }
            c.setAutoCommit(true);
            check(scalar(c, "SELECT count(*) FROM items WHERE name = 'jdbc kept'") == 1, "committed");
            check(scalar(c, "SELECT count(*) FROM items WHERE name = 'jdbc rolled back'") == 0, "rolled back");

            // Errors and recovery.
            try (Statement st = c.createStatement()) {
                expectState("42501", st, "DELETE FROM items");
                expectState("22012", st, "SELECT 1 / 0");
            }
            check(scalar(c, "SELECT 2") == 2, "after errors");

            // COPY in and out.
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            long copied = copy.copyIn("COPY items (name) FROM STDIN", new StringReader("jdbc c1\njdbc c2\n"));
            check(copied == 2, "copied " + copied);
            StringWriter out = new StringWriter();
            copy.copyOut("COPY (SELECT name FROM items WHERE name LIKE 'jdbc c%' ORDER BY 1) TO STDOUT", out);
            check(out.toString().equals("jdbc c1\njdbc c2\n"), "copy out: " + out);

            // Cancel a running statement from another thread.
            try (Statement st = c.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try {
                        Thread.sleep(500);
                        st.cancel();
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                });
                canceller.start();
                long started = System.nanoTime();
                expectState("57014", st, "SELECT pg_sleep(20)");
                check(System.nanoTime() - started < 10_000_000_000L, "cancelled in time");
                canceller.join();
            }
            check(scalar(c, "SELECT 3") == 3, "after cancel");
        }
        System.out.println("SMOKE OK");
    }
}
