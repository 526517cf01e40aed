/*
 * Confluent's canonical form of Avro schemas, and Java clients that look schemas up by it.
 *
 * Usage:
 *   java CanonicalProbe canonical SCHEMAS.json OUT.json
 *     SCHEMAS.json is a JSON array of schema texts (strings); OUT.json receives, for each,
 *     io.confluent.kafka.schemaregistry.avro.AvroSchema#canonicalString() (or "ERROR: ...").
 *   java CanonicalProbe clients URL SUBJECT_TOPIC CONNECT_TOPIC RESULT.json
 *     1. "serialize": KafkaAvroSerializer with auto.register.schemas=false writes a
 *        record of SCHEMA for SUBJECT_TOPIC (whose value subject another client
 *        registered in another spelling) and reports the schema id in the frame;
 *     2. "connect": Kafka Connect's AvroConverter with auto.register.schemas=false
 *        converts a Struct for CONNECT_TOPIC to bytes and back and reports the id and
 *        the values it read back.
 * Every step records its outcome or the exception it threw in RESULT.json.
 */

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.confluent.connect.avro.AvroConverter;
import io.confluent.kafka.schemaregistry.avro.AvroSchema;
import io.confluent.kafka.serializers.KafkaAvroSerializer;
import java.io.File;
import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.connect.data.SchemaAndValue;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;

public final class CanonicalProbe {
  private CanonicalProbe() {}

  static final String SCHEMA =
      "{\"type\":\"record\",\"name\":\"Row\",\"namespace\":\"cdcsync.canon\",\"fields\":["
          + "{\"name\":\"id\",\"type\":\"long\"},"
          + "{\"name\":\"name\",\"type\":[\"null\",\"string\"],\"default\":null}]}";

  interface Step {
    void run(ObjectNode into) throws Exception;
  }

  static void step(ObjectNode result, String name, Step body) {
    ObjectNode node = result.putObject(name);
    try {
      body.run(node);
    } catch (Throwable t) {
      node.put("error", t.getClass().getName() + ": " + t.getMessage());
    }
  }

  static int frameId(byte[] bytes) {
    return ByteBuffer.wrap(bytes, 1, 4).getInt();
  }

  public static void main(String[] args) throws Exception {
    ObjectMapper mapper = new ObjectMapper();
    if (args[0].equals("canonical")) {
      ArrayNode out = mapper.createArrayNode();
      for (JsonNode text : mapper.readTree(new File(args[1]))) {
        try {
          out.add(new AvroSchema(text.asText()).canonicalString());
        } catch (Exception e) {
          out.add("ERROR: " + e);
        }
      }
      mapper.writerWithDefaultPrettyPrinter().writeValue(new File(args[2]), out);
      return;
    }
    String url = args[1];
    String topic = args[2];
    String connectTopic = args[3];
    ObjectNode result = mapper.createObjectNode();
    Map<String, Object> config = new HashMap<>();
    config.put("schema.registry.url", url);
    config.put("auto.register.schemas", false);

    step(result, "serialize", node -> {
      Schema schema = new Schema.Parser().parse(SCHEMA);
      GenericRecord record = new GenericData.Record(schema);
      record.put("id", 42L);
      record.put("name", "java");
      try (KafkaAvroSerializer serializer = new KafkaAvroSerializer()) {
        serializer.configure(config, false);
        node.put("id", frameId(serializer.serialize(topic, record)));
      }
    });

    step(result, "connect", node -> {
      org.apache.kafka.connect.data.Schema schema =
          SchemaBuilder.struct()
              .name("cdcsync.canon.Row")
              .field("id", org.apache.kafka.connect.data.Schema.INT64_SCHEMA)
              .field("name", org.apache.kafka.connect.data.Schema.OPTIONAL_STRING_SCHEMA)
              .build();
      Struct value = new Struct(schema).put("id", 7L).put("name", "connect");
      AvroConverter converter = new AvroConverter();
      converter.configure(config, false);
      byte[] bytes = converter.fromConnectData(connectTopic, schema, value);
      node.put("id", frameId(bytes));
      SchemaAndValue back = converter.toConnectData(connectTopic, bytes);
      Struct read = (Struct) back.value();
      node.put("read_id", read.getInt64("id"));
      node.put("read_name", read.getString("name"));
      node.put("schema_name", back.schema().name());
    });

    mapper.writerWithDefaultPrettyPrinter().writeValue(new File(args[4]), result);
  }
}
