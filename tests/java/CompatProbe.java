/*
 * Reference verdicts of Apache Avro (Java) on reader/writer schema pairs.
 *
 * Usage: java CompatProbe CORPUS.json OUT.json
 *
 * CORPUS.json is a JSON array of {"name", "reader", "writer"} objects (schemas as
 * JSON values). For each pair, OUT.json receives {"name", "verdict", "messages"}
 * where verdict is COMPATIBLE, INCOMPATIBLE or ERROR (a schema did not parse),
 * as decided by org.apache.avro.SchemaCompatibility.checkReaderWriterCompatibility.
 * The result goes to a file, not stdout, so that library logging cannot mix in.
 */

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;

public final class CompatProbe {
  private CompatProbe() {}

  public static void main(String[] args) throws Exception {
    ObjectMapper mapper = new ObjectMapper();
    JsonNode corpus = mapper.readTree(new File(args[0]));
    ArrayNode out = mapper.createArrayNode();
    for (JsonNode pair : corpus) {
      ObjectNode row = out.addObject();
      row.put("name", pair.get("name").asText());
      ArrayNode messages = row.putArray("messages");
      try {
        Schema reader = new Schema.Parser().parse(mapper.writeValueAsString(pair.get("reader")));
        Schema writer = new Schema.Parser().parse(mapper.writeValueAsString(pair.get("writer")));
        SchemaCompatibility.SchemaPairCompatibility result =
            SchemaCompatibility.checkReaderWriterCompatibility(reader, writer);
        row.put("verdict", result.getType().name());
        for (SchemaCompatibility.Incompatibility inc : result.getResult().getIncompatibilities()) {
          messages.add(inc.getType() + " at " + inc.getLocation() + ": " + inc.getMessage());
        }
      } catch (Exception e) {
        row.put("verdict", "ERROR");
        messages.add(e.toString());
      }
    }
    mapper.writerWithDefaultPrettyPrinter().writeValue(new File(args[1]), out);
  }
}
