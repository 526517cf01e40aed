/*
 * Confluent's Java clients (kafka-schema-registry-client, kafka-avro-serializer 7.0)
 * against a schema registry, to prove cross-language compatibility.
 *
 * Usage: java RegistryProbe URL PY_TOPIC PY_IN JAVA_TOPIC JAVA_OUT RESULT.json
 *
 *   1. reads PY_IN (a framed Avro value written for PY_TOPIC by another client) with
 *      KafkaAvroDeserializer and records it as JSON under "read_from_other";
 *   2. writes the fixed record below for JAVA_TOPIC with KafkaAvroSerializer
 *      (auto-registering its schema) into JAVA_OUT;
 *   3. uses CachedSchemaRegistryClient: getLatestSchemaMetadata, getAllSubjects,
 *      testCompatibility (a compatible and an incompatible evolution),
 *      updateCompatibility and getCompatibility on JAVA_TOPIC's value subject.
 *
 * Every step records its outcome or the exception it threw (class and message) in
 * RESULT.json, so that a failing step never hides the others; logging goes to the
 * console and never into RESULT.json.
 */

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.confluent.kafka.schemaregistry.avro.AvroSchema;
import io.confluent.kafka.schemaregistry.client.CachedSchemaRegistryClient;
import io.confluent.kafka.schemaregistry.client.SchemaMetadata;
import io.confluent.kafka.serializers.KafkaAvroDeserializer;
import io.confluent.kafka.serializers.KafkaAvroSerializer;
import java.io.File;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;

public final class RegistryProbe {
  private RegistryProbe() {}

  static final String SCHEMA =
      "{\"type\":\"record\",\"name\":\"JavaEvent\",\"namespace\":\"cdcsync.probe\",\"fields\":["
          + "{\"name\":\"id\",\"type\":\"long\"},"
          + "{\"name\":\"label\",\"type\":\"string\"},"
          + "{\"name\":\"amount\",\"type\":\"double\"},"
          + "{\"name\":\"flag\",\"type\":\"boolean\"},"
          + "{\"name\":\"note\",\"type\":[\"null\",\"string\"],\"default\":null},"
          + "{\"name\":\"kind\",\"type\":{\"type\":\"enum\",\"name\":\"Kind\","
          + "\"symbols\":[\"INSERT\",\"UPDATE\",\"DELETE\"]}},"
          + "{\"name\":\"tags\",\"type\":{\"type\":\"array\",\"items\":\"string\"}}]}";

  /** Adds a field with a default: readers of the new schema can read old data and vice versa. */
  static final String EVOLVED =
      SCHEMA.replace(
          "{\"name\":\"tags\"",
          "{\"name\":\"extra\",\"type\":\"int\",\"default\":0},{\"name\":\"tags\"");

  /** Changes the type of "label" from string to int: incompatible both ways. */
  static final String BROKEN =
      SCHEMA.replace("{\"name\":\"label\",\"type\":\"string\"}", "{\"name\":\"label\",\"type\":\"int\"}");

  interface Step {
    void run(ObjectNode into) throws Exception;
  }

  static void step(ObjectNode result, String name, Step body) {
    ObjectNode node = result.putObject(name);
    try {
      body.run(node);
    } catch (Throwable t) {
      node.put("error", t.getClass().getName() + ": " + t.getMessage());
      Throwable cause = t.getCause();
      if (cause != null) {
        node.put("cause", cause.getClass().getName() + ": " + cause.getMessage());
      }
    }
  }

  public static void main(String[] args) throws Exception {
    String url = args[0];
    String pyTopic = args[1];
    File pyIn = new File(args[2]);
    String javaTopic = args[3];
    File javaOut = new File(args[4]);
    File resultFile = new File(args[5]);
    String subject = javaTopic + "-value";
    ObjectMapper mapper = new ObjectMapper();
    ObjectNode result = mapper.createObjectNode();

    Map<String, Object> config = new HashMap<>();
    config.put("schema.registry.url", url);
    config.put("auto.register.schemas", true);

    step(result, "read_from_other", node -> {
      try (KafkaAvroDeserializer deserializer = new KafkaAvroDeserializer()) {
        deserializer.configure(config, false);
        Object value = deserializer.deserialize(pyTopic, Files.readAllBytes(pyIn.toPath()));
        node.set("record", mapper.readTree(GenericData.get().toString(value)));
        node.put("schema", ((GenericRecord) value).getSchema().getFullName());
      }
    });

    step(result, "write", node -> {
      Schema schema = new Schema.Parser().parse(SCHEMA);
      GenericRecord record = new GenericData.Record(schema);
      record.put("id", 9007199254740993L);
      record.put("label", "from java ✓");
      record.put("amount", 12.5);
      record.put("flag", true);
      record.put("note", null);
      record.put("kind", new GenericData.EnumSymbol(schema.getField("kind").schema(), "UPDATE"));
      record.put("tags", Arrays.asList("a", "b"));
      try (KafkaAvroSerializer serializer = new KafkaAvroSerializer()) {
        serializer.configure(config, false);
        byte[] bytes = serializer.serialize(javaTopic, record);
        Files.write(javaOut.toPath(), bytes);
        node.put("bytes", bytes.length);
      }
    });

    CachedSchemaRegistryClient client = new CachedSchemaRegistryClient(url, 100);

    step(result, "latest", node -> {
      SchemaMetadata latest = client.getLatestSchemaMetadata(subject);
      node.put("id", latest.getId());
      node.put("version", latest.getVersion());
      node.put("schema", latest.getSchema());
    });

    step(result, "subjects", node -> {
      node.putPOJO("subjects", client.getAllSubjects());
    });

    step(result, "compatible_evolution", node -> {
      node.put("is_compatible", client.testCompatibility(subject, new AvroSchema(EVOLVED)));
    });

    step(result, "incompatible_evolution", node -> {
      node.put("is_compatible", client.testCompatibility(subject, new AvroSchema(BROKEN)));
    });

    step(result, "update_compatibility", node -> {
      node.put("updated", client.updateCompatibility(subject, "FULL"));
      node.put("read_back", client.getCompatibility(subject));
    });

    step(result, "register_evolved", node -> {
      int id = client.register(subject, new AvroSchema(EVOLVED));
      node.put("id", id);
      node.put("version", client.getVersion(subject, new AvroSchema(EVOLVED)));
      node.putPOJO("versions", client.getAllVersions(subject));
    });

    mapper.writerWithDefaultPrettyPrinter().writeValue(resultFile, result);
  }
}
